"""The MPS daemon helper and bench_aggregate's after_mps variant. NVIDIA's control program
cannot run here (no GPU, no driver utilities): a stand-in on PATH records how it is called,
which is what the helper is responsible for (the flags, the private folders, quitting)."""
import os
import stat

import pytest

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials import bench_aggregate as agg
from carvelab.trials import mps

from tests.trials.test_bench_aggregate import TINY

FAKE = """#!/bin/sh
if [ "$1" = "-d" ]; then
  [ -n "$FAKE_MPS_FAIL" ] && { echo "cannot start: $FAKE_MPS_FAIL" >&2; exit 1; }
  echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$FAKE_MPS_LOG"
else
  read cmd
  echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"
fi
"""


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / mps.CONTROL
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_LOG", str(log))
    return log


def test_a_missing_control_program_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"nvidia-cuda-mps-control is not on PATH.*'after_mps'"):
        with mps.mps_daemon(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


def test_the_daemon_gets_private_folders_and_is_told_to_quit(fake_control, tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    with mps.mps_daemon(parent) as env:
        assert set(env) == {mps.PIPE_ENV, mps.LOG_ENV}
        assert all(os.path.isdir(env[k]) and env[k].startswith(str(parent)) for k in env)
        assert fake_control.read_text().split() == ["start", env[mps.PIPE_ENV], env[mps.LOG_ENV]]
    lines = fake_control.read_text().splitlines()
    assert lines[1] == f"quit {env[mps.PIPE_ENV]}"  # quit goes to this daemon's pipe, not the default one
    assert list(parent.iterdir()) == []
    assert mps.PIPE_ENV not in os.environ  # the caller's environment is left alone


def test_a_daemon_that_fails_to_start_says_why_and_leaves_nothing(fake_control, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_FAIL", "compute mode is prohibited")
    with pytest.raises(RuntimeError, match=r"-d failed \(exit 1\): cannot start: compute mode is prohibited"):
        with mps.mps_daemon(tmp_path):
            pass
    assert not fake_control.exists()  # nothing was started, so nothing is told to quit
    assert list(p for p in tmp_path.iterdir() if p.name.startswith("carvelab-mps-")) == []


def test_after_mps_has_after_s_configs_and_runs_its_trials_inside_one_daemon(fake_control):
    spec = load_sweep("quickstart_gpu", TINY)
    points = agg.sample_points(spec, 2, 0)
    assert agg.variant_configs(spec, points, "after_mps") == agg.variant_configs(spec, points, "after")
    configs = agg.variant_configs(spec, points, "before")  # eager and on the CPU: the daemon is what is checked
    out = agg.run_variant(configs, "after_mps", workers=2)
    assert out["completed"] == 2
    calls = fake_control.read_text().split("\n")
    assert calls[0].startswith("start ") and calls[1].startswith("quit ") and len([c for c in calls if c]) == 2
