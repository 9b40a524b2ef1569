"""The driver's settings that Ray workers on every node must share travel in runtime_env."""
from carvelab.trials.sweep import scheduler


def test_worker_runtime_env_passes_cache_dir_and_kernel_switches(monkeypatch, tmp_path):
    for name in scheduler.WORKER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert scheduler.worker_runtime_env() == {}
    monkeypatch.setenv("CARVELAB_AUTOTUNE", "0")
    assert scheduler.worker_runtime_env() == {"env_vars": {"CARVELAB_AUTOTUNE": "0"}}
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CARVELAB_CUDA_GRAPHS", "0")
    monkeypatch.setenv("CARVELAB_FUSED_CONTENT", "0")
    monkeypatch.setenv("SOME_OTHER_SETTING", "1")
    assert scheduler.worker_runtime_env() == {
        "env_vars": {"CARVELAB_AUTOTUNE": "0", "TRITON_CACHE_DIR": str(tmp_path), "CARVELAB_CUDA_GRAPHS": "0",
                     "CARVELAB_FUSED_CONTENT": "0"}}
