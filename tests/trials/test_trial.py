"""run_trial: a pure function that trains, reports, prunes, diverges, resumes."""
import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from carvelab.search_space.loading import load_trial_config
from carvelab.trials import training
from carvelab.trials.reporting import RecordingReporter
from carvelab.trials.tasks.base import TEST_METRICS
from carvelab.trials.trial import COMPLETED, FAILED, PRUNED, run_trial

REPO = Path(__file__).resolve().parents[2]
METRICS = {"val_loss", "val_accuracy", "val_ppl", "train_loss", "tokens_per_s", "peak_mem_mb", "params",
           "flops_per_token", "state_bytes", "vocab_size", "wall_s", "first_step_s"}


# each task takes its own keys (a key of another task is an error)
TASK_KEYS = {"mqar": {"num_kv_pairs": 4, "train_examples": 256},
             "update_mqar": {"num_kv_pairs": 4, "num_updates": 2, "train_examples": 256}, "lm": {}}


def tiny(tmp_path, task="mqar", **train):
    task_cfg = {"name": task, "seq_len": 40, "vocab_size": 32, "val_examples": 32, "cache_dir": str(tmp_path / "cache"),
                **TASK_KEYS[task]}
    return load_trial_config({
        "preset": "gdn2",
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "chunk_size": 16, "backend": "torch"},
        "task": task_cfg,
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "warmup_steps": 2, "compile_steps": 1,
                  "device": "cpu", **train},
    })


@pytest.mark.parametrize("task", ["mqar", "update_mqar", "lm"])
def test_each_task_trains_and_returns_every_metric(task, tmp_path):
    started = time.perf_counter()
    result = run_trial(tiny(tmp_path, task))
    elapsed = time.perf_counter() - started
    assert result.status == COMPLETED and result.steps == 6
    assert METRICS <= set(result.metrics)
    assert all(math.isfinite(result.metrics[m]) for m in METRICS)
    assert [step for step, _ in result.history] == [3, 6]
    assert result.backend == "torch_chunk"
    assert result.metrics["params"] > 0 and result.metrics["tokens_per_s"] > 0
    # the test split: evaluated once, at the end, in the final metrics and never in the reported history
    assert set(TEST_METRICS) <= set(result.metrics)
    assert all(not set(TEST_METRICS) & set(m) for _, m in result.history)
    # model construction -> end of the first step: inside the call, longer than no step at all
    assert 0 < result.metrics["first_step_s"] < elapsed


def test_eval_at_init_scores_the_untrained_model_identically_for_matched_presets(tmp_path):
    """train.eval_at_init: CARVE and GDN-2 at matched init compute the same function (the
    content gate's U = 0), so their init_val_loss agree to the last bit; training then moves them."""
    def config(preset):
        cfg = tiny(tmp_path, eval_at_init=True)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init="matched", content_gate=preset == "carve"))

    gdn2, carve = run_trial(config("gdn2")), run_trial(config("carve"))
    assert gdn2.metrics["init_val_loss"] == carve.metrics["init_val_loss"]
    assert gdn2.metrics["init_val_accuracy"] == carve.metrics["init_val_accuracy"]
    assert gdn2.metrics["init_val_loss"] != gdn2.metrics["val_loss"]       # the untrained model, not the trained one
    plain = run_trial(tiny(tmp_path))
    assert "init_val_loss" not in plain.metrics


def test_reporter_stop_prunes_at_that_step(tmp_path):
    reporter = RecordingReporter(stop_when=lambda step, m: step >= 3)
    result = run_trial(tiny(tmp_path, steps=9), reporter)
    assert result.status == PRUNED and result.reason == "pruned" and result.steps == 3
    assert [s for s, _ in reporter.history] == [3]
    assert not set(TEST_METRICS) & set(result.metrics)  # a pruned trial is never evaluated on test


def test_nan_loss_ends_the_trial_as_diverged(tmp_path, monkeypatch):
    real = training.compute_loss
    calls = {"n": 0}

    def poisoned(model, inputs, targets, ce_chunk=0):
        calls["n"] += 1
        loss = real(model, inputs, targets, ce_chunk)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr("carvelab.trials.training.compute_loss", poisoned)
    result = run_trial(tiny(tmp_path))
    assert result.status == FAILED and result.reason == "diverged" and result.steps == 2


def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    a = run_trial(tiny(tmp_path)).metrics
    b = run_trial(tiny(tmp_path)).metrics
    for key in ("val_loss", "val_accuracy", "train_loss", "params"):
        assert a[key] == b[key], key


def test_different_seed_changes_the_run(tmp_path):
    a = run_trial(tiny(tmp_path)).metrics
    cfg = tiny(tmp_path)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1),
                              model=dataclasses.replace(cfg.model, seed=1))
    assert run_trial(cfg).metrics["train_loss"] != a["train_loss"]


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    full = run_trial(tiny(tmp_path, steps=8, eval_every=4))
    ckpt = tmp_path / "ckpt"
    cfg = tiny(tmp_path, steps=8, eval_every=4, checkpoint_dir=str(ckpt), checkpoint_every=2)
    with pytest.raises(_Crash):  # the process "dies" after step 5; the last checkpoint is step 4
        run_trial(cfg, on_step=_crash_at(5))
    resumed = run_trial(cfg)
    assert resumed.steps == 8
    for key in ("val_loss", "val_accuracy", "train_loss"):
        assert resumed.metrics[key] == full.metrics[key], key


def _crash_at(step):
    def hook(s):
        if s == step:
            raise _Crash()
    return hook


class _Crash(Exception):
    pass


def test_finished_trial_is_not_rerun_from_its_checkpoint(tmp_path):
    cfg = tiny(tmp_path, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3)
    first = run_trial(cfg)
    calls = []
    again = run_trial(cfg, on_step=calls.append)
    assert calls == [] and again.metrics == first.metrics


def test_checkpoint_of_another_config_is_refused(tmp_path):
    run_trial(tiny(tmp_path, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3))
    other = tiny(tmp_path, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3, lr=1e-4)
    with pytest.raises(ValueError, match="train.checkpoint_dir"):
        run_trial(other)


def test_time_budget_excludes_the_first_step(tmp_path, monkeypatch):
    """A first step slowed by kernel compilation does not eat the trial's training time."""
    from carvelab.trials import trial as trial_mod

    real_step = trial_mod._Run.train_step
    calls = []

    def slow_first(self):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)  # a cold Triton cache
        return real_step(self)

    monkeypatch.setattr(trial_mod._Run, "train_step", slow_first)
    result = run_trial(tiny(tmp_path, steps=10**6, eval_every=10**6, max_seconds=0.5))
    assert result.status == COMPLETED and result.reason == "time_budget"
    assert result.steps > 1
    assert result.metrics["first_step_s"] >= 1.0
    assert result.metrics["wall_s"] >= 1.5  # 1 s compiling + 0.5 s of training


# the fused pieces' switches, in PIECES' order (kernels/fused.py)
PIECE_ENVS = ("CARVELAB_FUSED_CONV", "CARVELAB_FUSED_NORM", "CARVELAB_JOINT_PROJ", "CARVELAB_FUSED_GATES",
              "CARVELAB_FUSED_CE", "CARVELAB_CAST_ONCE")


@pytest.mark.parametrize("preset, device, fused, graphs, axis, expected", [
    ("carve", "cuda", "1", "1", "key", "triton_chunk+fused_content"),
    ("carve", "cuda", "1", "1", "value", "triton_recurrent+cuda_graphs"),  # no fused kernel on the value axis
    ("carve", "cuda", "0", "1", "key", "triton_chunk+cuda_graphs"),
    ("carve", "cuda", "0", "0", "key", "triton_chunk"),
    ("gdn2", "cuda", "1", "1", "key", "triton_chunk"),  # no content gate: nothing is replayed
    ("carve", "cpu", "1", "1", "key", "torch_chunk"),
])
def test_trials_record_how_the_content_gate_runs(monkeypatch, preset, device, fused, graphs, axis, expected):
    import torch

    from carvelab.carve_models.presets import preset_config
    from carvelab.trials.trial import kernel_backend

    monkeypatch.setenv("CARVELAB_FUSED_CONTENT", fused)
    monkeypatch.setenv("CARVELAB_CUDA_GRAPHS", graphs)
    for env in PIECE_ENVS:
        monkeypatch.setenv(env, "0")  # the fused pieces' tags: the next test
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = preset_config(preset, d_model=32, n_layers=2, n_heads=2, vocab_size=32, erase_axis=axis)
    assert kernel_backend(cfg, torch.device(device)) == expected


@pytest.mark.parametrize("device, conv, norm, others, expected", [
    ("cuda", "1", "0", "0", "triton_chunk+fused_content+fused_conv"),
    ("cuda", "0", "0", "0", "triton_chunk+fused_content"),
    ("cuda", "1", "1", "0", "triton_chunk+fused_content+fused_conv+fused_norm"),
    ("cuda", "0", "1", "0", "triton_chunk+fused_content+fused_norm"),
    ("cuda", "1", "1", "1", "triton_chunk+fused_content+fused_conv+fused_norm+joint_proj+fused_gates+fused_ce+cast_once"),
    ("cpu", "1", "1", "1", "torch_chunk"),  # the torch path keeps torch's convolution, norms and projections
])
def test_trials_record_the_fused_pieces(monkeypatch, device, conv, norm, others, expected):
    import torch

    from carvelab.carve_models.presets import preset_config
    from carvelab.trials.trial import kernel_backend

    monkeypatch.setenv("CARVELAB_FUSED_CONV", conv)
    monkeypatch.setenv("CARVELAB_FUSED_NORM", norm)
    for env in PIECE_ENVS[2:]:  # the pieces after the convolution and the norms
        monkeypatch.setenv(env, others)
    monkeypatch.delenv("CARVELAB_FUSED_CONTENT", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = preset_config("carve", d_model=32, n_layers=2, n_heads=2, vocab_size=32)
    assert kernel_backend(cfg, torch.device(device)) == expected


@pytest.mark.parametrize("ratio, mixing, device, expected", [
    ("0:1", True, "cuda", "none+fused_norm+joint_proj+fused_ce+cast_once"),  # attention only: its norms and MLPs
    ("1:0", False, "cuda", "none+fused_norm+joint_proj+fused_ce+cast_once"),  # no sequence mixing
    ("0:1", True, "cpu", "none"),
])
def test_models_without_a_recurrence_record_the_fused_pieces_they_have(monkeypatch, ratio, mixing, device, expected):
    import torch

    from carvelab.carve_models.presets import preset_config
    from carvelab.trials.trial import kernel_backend

    for env in PIECE_ENVS:
        monkeypatch.setenv(env, "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = preset_config("gdn2", d_model=32, n_layers=2, n_heads=2, vocab_size=32, hybrid_ratio=ratio,
                        sequence_mixing=mixing)
    assert kernel_backend(cfg, torch.device(device)) == expected


def test_first_step_s_does_not_count_the_first_optimizers_import_of_dynamo(tmp_path):
    # torch imports torch._dynamo (seconds, once per process) when a process builds its first
    # optimizer; a fresh process shows whether the trial imports it before the model is built
    script = f"""
import sys
from carvelab.trials import trial
from tests.trials.test_trial import tiny
import pathlib
seen = []
build = trial.build_model
def recording_build(*args, **kwargs):
    seen.append("torch._dynamo" in sys.modules)
    return build(*args, **kwargs)
trial.build_model = recording_build
assert "torch._dynamo" not in sys.modules
result = trial.run_trial(tiny(pathlib.Path({str(tmp_path)!r}), steps=1, eval_every=1))
print(result.status, seen)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["completed", "[True]"]


class _SplitTask:
    """A stand-in task whose validation and test splits differ by construction: the test
    targets are a constant token the validation set never scores, and a reading of either
    split is recorded."""

    def __init__(self, inner):
        self.inner, self.reads = inner, []
        self.vocab_size, self.seq_len, self.quality_metric = inner.vocab_size, inner.seq_len, inner.quality_metric

    def train_batch(self, step, batch_size):
        return self.inner.train_batch(step, batch_size)

    def val_batches(self, batch_size, max_batches=0):
        self.reads.append("val")
        return self.inner.val_batches(batch_size, max_batches)

    def test_batches(self, batch_size, max_batches=0):
        self.reads.append("test")
        for inputs, targets in self.inner.val_batches(batch_size, max_batches):
            yield inputs, torch.where(targets >= 0, torch.zeros_like(targets), targets)


def test_the_test_split_is_read_once_after_training_and_reported_apart(tmp_path):
    from carvelab.trials.tasks import build_task

    made = []
    result = run_trial(tiny(tmp_path, steps=6), task_factory=lambda cfg: made.append(_SplitTask(build_task(cfg)))
                       or made[-1])
    assert made[0].reads == ["val", "val", "test"]  # two evaluations, then the one test read
    # token 0 is a key, never a scored value: the test accuracy differs from the validation one
    assert result.metrics["test_accuracy"] != result.metrics["val_accuracy"]
    assert result.metrics["test_loss"] != result.metrics["val_loss"]


def test_graphs_of_an_earlier_trial_are_released_and_not_counted_as_the_next_ones_memory(monkeypatch):
    """A process that runs trials one after another (a reused pool or Ray worker): the captured
    content-gate graphs of the first are dropped before the second starts, and what is still
    allocated then is left out of the second's peak. The allocator is faked here (no GPU); the
    test below does it on a GPU."""
    from carvelab.kernels import cuda_graph
    from carvelab.trials import measure

    cuda_graph.POOL.instances["earlier trial"] = [cuda_graph.Instance()]
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: calls.append("workspaces"), raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 300 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1000 * 2**20)
    cuda = torch.device("cuda")
    before = measure.release_device_memory(cuda)
    assert cuda_graph.POOL.instances == {} and calls == ["sync", "workspaces", "empty", "reset"]
    assert before == 300
    assert measure.Meter(cuda, skip=0, baseline_mb=before).peak_memory_mb() == 700
    assert measure.release_device_memory(torch.device("cpu")) == 0.0


def test_a_finished_trial_has_dropped_its_model_and_optimizer_when_the_device_is_released(tmp_path, monkeypatch):
    """The release at a trial's end frees that trial's memory only if nothing of the trial still
    holds its model, optimiser or captured step; checked here at the moment of the release."""
    import gc
    import weakref

    from carvelab.trials import trial

    refs, seen = {}, []
    build, make = trial.build_model, trial.make_optimizer

    def build_model(*args, **kwargs):
        model, cfg = build(*args, **kwargs)
        refs["model"] = weakref.ref(model)
        return model, cfg

    def make_optimizer(*args, **kwargs):
        opt = make(*args, **kwargs)
        refs["optimizer"] = weakref.ref(opt)
        return opt

    def release(device):
        gc.collect()
        seen.append({name: ref() is not None for name, ref in refs.items()})
        return 0.0

    monkeypatch.setattr(trial, "build_model", build_model)
    monkeypatch.setattr(trial, "make_optimizer", make_optimizer)
    monkeypatch.setattr(trial, "release_device_memory", release)
    result = run_trial(tiny(tmp_path, steps=4))
    assert result.status == COMPLETED
    assert seen == [{}, {"model": False, "optimizer": False}]  # at the start (none yet), at the end


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU allocator's peak needs a GPU")
def test_two_identical_gpu_trials_in_one_process_report_the_same_peak_memory(tmp_path):
    from carvelab.kernels import cuda_graph
    from carvelab.trials import measure

    cfg = load_trial_config({
        "preset": "carve", "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "chunk_size": 16},
        "task": {"name": "mqar", "seq_len": 64, "vocab_size": 64, "num_kv_pairs": 4, "train_examples": 256,
                 "val_examples": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"steps": 8, "batch_size": 8, "eval_every": 8, "warmup_steps": 2, "device": "cuda",
                  "dtype": "bfloat16", "timing_steps": 0},
    })
    cuda = torch.device("cuda")
    first = run_trial(cfg)
    left_by_first = measure.release_device_memory(cuda)
    second = run_trial(cfg)
    left_by_second = measure.release_device_memory(cuda)
    assert first.status == second.status == COMPLETED
    assert sum(len(v) for v in cuda_graph.POOL.instances.values()) == 0
    assert second.metrics["peak_mem_mb"] == pytest.approx(first.metrics["peak_mem_mb"], rel=0.02)
    # nothing of a finished trial stays allocated: a process running trial after trial holds no more
    assert left_by_second == pytest.approx(left_by_first, abs=1.0)


def test_a_trial_with_the_chunked_cross_entropy_trains_as_one_without(tmp_path):
    plain = run_trial(tiny(tmp_path))
    chunked = run_trial(tiny(tmp_path, ce_chunk=24))  # 4 x 40 tokens in pieces of 24 (the last shorter)
    assert chunked.status == COMPLETED
    for metric in ("train_loss", "val_loss", "test_loss"):
        assert chunked.metrics[metric] == pytest.approx(plain.metrics[metric], rel=1e-4), metric
