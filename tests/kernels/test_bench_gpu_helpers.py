"""The GPU benchmark's diagnostic helpers that need no GPU (the host profile of a call, the
report of autotune choices, ...) and its reference check, on the kernel tests' device."""
import json
import subprocess
import sys
import time

import torch
import triton

from carvelab.kernels import bench_gpu, triton_chunk


def test_host_profile_names_the_functions_that_take_the_host_longest(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    x = torch.randn(256, 256)

    def work():
        for _ in range(50):
            torch.sigmoid(x)
        return x.sum()

    rows = bench_gpu.host_profile(work, top=3)
    assert len(rows) == 3
    assert "50x" in rows[0] and "sigmoid" in rows[0], rows
    assert float(rows[0].split(" ms ")[0]) > 0


def test_autotune_choices_lists_every_autotuned_kernel_and_its_choices(monkeypatch):
    config = triton.Config({"BV": 32}, num_warps=4, num_stages=2)
    monkeypatch.setitem(triton_chunk._state_fwd_kernel.cache, (128, 64, 128, "torch.bfloat16"), config)
    choices = bench_gpu.autotune_choices()
    assert {"_intra_fwd_kernel", "_solve_fwd_kernel", "_state_fwd_kernel", "_state_bwd_kernel",
            "_recurrent_fwd_kernel", "_cov_fwd_kernel"} <= set(choices)
    assert choices["_state_fwd_kernel"][str((128, 64, 128, "torch.bfloat16"))] == str(config)


def test_the_warm_up_cleans_the_cache_folder_triton_uses(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "tc"))
    assert bench_gpu._cache_dir() == tmp_path / "tc"
    if hasattr(triton, "knobs"):  # Triton >= 3.4 also moves its default with TRITON_HOME
        monkeypatch.delenv("TRITON_CACHE_DIR")
        monkeypatch.setenv("TRITON_HOME", str(tmp_path / "home"))
        assert bench_gpu._cache_dir() == tmp_path / "home" / ".triton" / "cache"


def test_the_content_gates_grid_counts_programs_chunks_and_time_per_chunk(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(multi_processor_count=132))
    large = bench_gpu.content_grid(bench_gpu.SHAPES["large"], fwd_bwd_ms=32.0)
    assert large == {"programs": 64, "multiprocessors": 132, "busy_multiprocessors_pct": 100.0 * 64 / 132,
                     "chunks_per_program": 64, "us_per_chunk": 500.0}
    small = bench_gpu.content_grid(bench_gpu.SHAPES["small"], fwd_bwd_ms=2.0)
    assert small["programs"] == 64 and small["chunks_per_program"] == 8 and small["us_per_chunk"] == 250.0
    assert bench_gpu.content_grid({"B": 64, "T": 100, "H": 4}, 1.0)["busy_multiprocessors_pct"] == 100.0


def test_each_timed_point_is_handed_on_before_the_next_starts(monkeypatch):
    """A run cut short (a call's time limit, a compile that does not end) keeps every point
    it timed: ``bench_shape`` reports its partial result after each point."""
    inputs = {n: torch.zeros(2, 4) for n in ("q", "k", "v", "g", "b", "w", "beta", "g_head")}
    monkeypatch.setattr(bench_gpu, "leaf_inputs", lambda shape: inputs)
    monkeypatch.setattr(bench_gpu, "points", lambda x: {"gdn2": ("ours", None), "kda": ("ours", None)})
    monkeypatch.setattr(bench_gpu, "SELECTED", ())

    def time_point(ours, theirs, x, label):
        if label == "kda":
            raise KeyboardInterrupt  # the second point never finishes
        return {"ours": {"fwd_ms": 1.0, "fwd_bwd_ms": 3.0, "peak_extra_mb": 10.0}}

    monkeypatch.setattr(bench_gpu, "time_point", time_point)
    saved = []
    try:
        bench_gpu.bench_shape("small", bandwidth=1000.0, progress=lambda out: saved.append(json.dumps(out)))
    except KeyboardInterrupt:
        pass
    assert len(saved) == 1
    points = json.loads(saved[0])["points"]
    assert list(points) == ["gdn2"] and points["gdn2"]["ours"]["fwd_bwd_ms"] == 3.0
    assert points["gdn2"]["hbm_floor_fwd_bwd_ms"] > 0  # the row is complete when handed on


def test_the_warm_up_ends_at_its_deadline_and_reports_every_unit(monkeypatch, tmp_path):
    """--warm-deadline: units still compiling are killed, the rest are not started, and the
    report says which is which (a time-limited run keeps that record)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bench_gpu, "USE_FLA", False)
    monkeypatch.setattr(bench_gpu, "SELECTED", ("gdn2", "kda", "gdn"))
    popen = subprocess.Popen

    def worker(cmd):  # cmd: python -m carvelab.kernels.bench_gpu warm SHAPE POINT WHO
        seconds = 0 if cmd[-2] == "gdn2" else 60  # gdn2 compiles at once, the others never end
        return popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])

    monkeypatch.setattr(subprocess, "Popen", worker)
    start = time.monotonic()
    out = bench_gpu.warm_cache(["small"], jobs=1, deadline_s=3.0)
    assert time.monotonic() - start < 30
    units = out["units"]
    assert units["small/gdn2/ours"]["rc"] == 0
    assert units["small/kda/ours"]["rc"] == -9 and units["small/kda/ours"]["s"] >= 2.0  # killed at the deadline
    assert units["small/gdn/ours"] == "not started"


def test_the_reference_check_covers_every_gate_form_the_bench_compares_with_fla(monkeypatch):
    """Every point timed against fla is first checked against the reference in its own gate
    form: per-channel b and w (gdn2), a per-token beta read as one column (kda), a per-head
    decay (gdn). A form whose kernels disagree fails the check, and its keys say which."""
    from carvelab.kernels import reference
    from tests.kernels.test_triton_recurrent import DEVICE

    assert set(bench_gpu.GATE_FORMS) == {p.split("[")[0] for p in bench_gpu.FLA_POINTS}
    result = bench_gpu.check_against_reference(T=40, device=DEVICE)
    assert result["passed"], result
    assert {"o", "dq", "db", "dw", "kda:o", "kda:dbeta", "kda:dg", "gdn:dg_head", "gdn:dbeta"} <= set(result["errors"])

    real = reference.gated_delta_reference

    def off_for_one_column_gates(q, k, v, g, b, w, *args, **kwargs):
        out = real(q, k, v, g, b, w, *args, **kwargs)
        return out._replace(o=out.o * 1.01) if b.dim() == 3 else out  # beta [B, T, H]

    monkeypatch.setattr(reference, "gated_delta_reference", off_for_one_column_gates)
    wrong = bench_gpu.check_against_reference(T=40, device=DEVICE)
    assert not wrong["passed"]
    assert wrong["errors"]["kda:o"] > 1e-3 and wrong["errors"]["gdn:o"] > 1e-3 and wrong["errors"]["o"] <= 1e-4
