"""Sweep benchmarks (print, don't assert), each against a baseline measured in the same run.

    python -m carvelab.trials.bench_sweep overhead          # 2-s and 30-s trials, ~3 minutes
    python -m carvelab.trials.bench_sweep pruning           # Pareto pruning vs none, ~5 minutes
    python -m carvelab.trials.bench_sweep overhead --quick  # seconds-long smoke run
    python -m carvelab.trials.bench_sweep startup           # kernel compile cost per trial, cold vs warm cache
    python -m carvelab.trials.bench_sweep gpu               # quickstart_gpu: fractional GPUs, utilisation
    python -m carvelab.trials.bench_sweep scale [--trials 2000] [storage=URL]   # see bench_scale.py

overhead: trials bounded by wall time (``train.max_seconds``), one at a time; the
orchestration overhead (Ray scheduling, MLflow and Optuna writes, result handling) is
the driver's loop time not spent inside trials, as a fraction of the time inside trials.

pruning: the same grid (same seeds) with ``pruner: pareto`` and with ``pruner: none``;
prints training steps spent and the hypervolume reached (one reference point for both).

startup: the same trial twice, each in a fresh process (as two Ray workers on one node),
sharing one new Triton cache; prints the seconds from model construction to the end of
the first training step (``first_step_s``): cold (compile + autotune) vs warm cache, and
each process's whole wall time (interpreter start, imports, the trial).

gpu: runs a sweep (default ``quickstart_gpu``: 0.25 GPU per trial) while sampling the
GPU's utilisation; prints how many trials ran at once and the utilisation achieved.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from carvelab.search_space.sweep_loading import load_sweep

BASE = {
    "preset": "gdn2",
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "chunk_size": 16},
    "task": {"name": "mqar", "vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4, "val_examples": 128},
    "train": {"steps": 200, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "eval_every": 20, "device": "cpu"},
}


def _sweep(name: str, **fields) -> dict:
    data = {"name": name, "base": copy.deepcopy(BASE), "mode": "grid",
            "objectives": [{"metric": "val_accuracy", "direction": "maximize"},
                           {"metric": "params", "direction": "minimize"}],
            "resources": {"cpus_per_trial": 1, "concurrency": 1}}
    data.update(fields)
    return data


def overhead(seconds: float, trials: int, root: Path) -> dict:
    from carvelab.trials.sweep.driver import run_sweep

    data = _sweep(f"overhead-{seconds:g}s", space={"train.seed": list(range(trials))})
    data["base"]["train"].update(steps=10**6, max_seconds=seconds, eval_every=10**6)
    summary = run_sweep(load_sweep(data), root)
    results = [json.loads(p.read_text()) for p in (Path(summary.sweep_dir) / "results").glob("*.json")]
    inside = sum(r["finished_at"] - r["started_at"] for r in results)
    return {"trial_seconds": seconds, "trials": len(results), "loop_s": summary.loop_s, "inside_trials_s": inside,
            "overhead_fraction": (summary.loop_s - inside) / inside}


def pruning(root: Path, steps: int) -> dict:
    from carvelab.dashboards.frame import open_sweep, trials_frame
    from carvelab.dashboards.pareto import hypervolume, reference_point
    from carvelab.trials.sweep.driver import run_sweep

    space = {"train.lr": [3e-3, 1e-3, 3e-4, 1e-4], "model.d_model": [32, 64]}
    out = {}
    for pruner in ("none", "pareto"):
        data = _sweep(f"pruning-{pruner}", space=space,
                      pruner={"name": pruner, "metric": "val_accuracy", "warmup_steps": 40, "min_peers": 2,
                              "min_dominators": 1})
        data["base"]["train"]["steps"] = steps
        summary = run_sweep(load_sweep(data), root)
        df = trials_frame(open_sweep(summary.name, root))
        out[pruner] = df
    done = {k: v.filter(v["state"] == "COMPLETE").select(["val_accuracy", "params"]).rows() for k, v in out.items()}
    directions = ["maximize", "minimize"]
    ref = reference_point(done["none"] + done["pareto"], directions)
    hv = {k: hypervolume(v, ref, directions) for k, v in done.items()}
    spent = {k: int(v["steps"].sum()) for k, v in out.items()}
    return {"steps_spent": spent, "hypervolume": hv, "steps_fraction": spent["pareto"] / spent["none"],
            "hypervolume_fraction": hv["pareto"] / hv["none"] if hv["none"] else float("nan")}


STARTUP_TRIAL = {
    "preset": "gdn2",
    "model": {"d_model": 256, "n_layers": 2, "n_heads": 4, "chunk_size": 64},
    "task": {"name": "mqar", "vocab_size": 512, "seq_len": 256, "num_kv_pairs": 16, "val_examples": 64},
    "train": {"steps": 3, "batch_size": 32, "eval_every": 3, "dtype": "bfloat16"},
}


def startup_trial(preset: str) -> dict:
    """Run STARTUP_TRIAL (with ``preset``) in this process; return its first_step_s."""
    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial

    data = copy.deepcopy(STARTUP_TRIAL)
    data["preset"] = preset
    result = run_trial(load_trial_config(data))
    return {"first_step_s": result.metrics.get("first_step_s"), "backend": result.backend, "status": result.status}


def parse_startup_output(stdout: str) -> dict:
    """The JSON line a ``startup-trial`` process prints last (libraries may print before it)."""
    return json.loads(stdout.strip().splitlines()[-1])


def startup(presets: list[str]) -> list[dict]:
    """Each preset twice in fresh processes sharing a new Triton cache: cold, then warm."""
    rows = []
    for preset in presets:
        env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="carvelab-triton-"))
        runs = []
        for _ in ("cold", "warm"):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "carvelab.trials.bench_sweep", "startup-trial", preset],
                                 env=env, capture_output=True, text=True, check=True)
            runs.append(parse_startup_output(out.stdout) | {"process_s": time.perf_counter() - started})
        rows.append({"preset": preset, "backend": runs[0]["backend"], "cold_s": runs[0]["first_step_s"],
                     "warm_s": runs[1]["first_step_s"], "cold_process_s": runs[0]["process_s"],
                     "warm_process_s": runs[1]["process_s"], "status": [run["status"] for run in runs]})
    return rows


class GpuSampler:
    """Samples the GPU's utilisation (%) every ``every`` seconds in a thread (NVML)."""

    def __init__(self, every: float = 0.5):
        import pynvml

        pynvml.nvmlInit()
        self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            self.samples.append((time.time(), util.gpu, mem.used / 2**20))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def concurrency(spans: list[tuple[float, float]], t: float) -> int:
    return sum(1 for a, b in spans if a <= t < b)


def gpu_sweep(sweep: str, root: Path, overrides: list[str]) -> dict:
    from carvelab.trials.sweep.driver import run_sweep

    spec = load_sweep(sweep, overrides)
    with GpuSampler() as sampler:
        summary = run_sweep(spec, root)
    results = [json.loads(p.read_text()) for p in (Path(summary.sweep_dir) / "results").glob("*.json")]
    spans = [(r["started_at"], r["finished_at"]) for r in results if r.get("started_at") and r.get("finished_at")]
    busy = [(t, u, m) for t, u, m in sampler.samples if concurrency(spans, t) > 0]
    return {
        "sweep": spec.name, "counts": dict(summary.counts), "loop_s": summary.loop_s,
        "gpus_per_trial": spec.resources.gpus_per_trial, "trials_with_gpu_ids": sum(bool(r.get("gpu_ids")) for r in results),
        "max_concurrent_trials": max((concurrency(spans, a) for a, _ in spans), default=0),
        "mean_concurrent_trials": statistics.fmean(concurrency(spans, t) for t, _, _ in busy) if busy else 0.0,
        "gpu_util_mean_pct": statistics.fmean(u for _, u, _ in busy) if busy else float("nan"),
        "gpu_util_median_pct": statistics.median(u for _, u, _ in busy) if busy else float("nan"),
        "gpu_mem_peak_mb": max((m for _, _, m in sampler.samples), default=float("nan")),
        "samples": len(busy), "sweep_dir": summary.sweep_dir,
        "trials": [{k: r.get(k) for k in ("status", "reason", "gpu_ids", "started_at", "finished_at")}
                   | {m: r.get("metrics", {}).get(m) for m in ("val_accuracy", "tokens_per_s", "first_step_s")}
                   for r in results],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["overhead", "pruning", "startup", "gpu", "scale", "startup-trial"])
    p.add_argument("args", nargs="*", help="startup: presets (default gdn2 carve); gpu, scale: sweep overrides; "
                                           "startup-trial: one preset (internal)")
    p.add_argument("--trials", type=int, default=2000, help="scale: how many trials")
    p.add_argument("--quick", action="store_true", help="small sizes: checks that the benchmark runs")
    p.add_argument("--root", default=None, help="where to keep the sweeps (default: a temporary folder)")
    p.add_argument("--sweep", default="quickstart_gpu", help="gpu: the sweep file or name")
    p.add_argument("--out", default=None, help="startup, gpu, scale: write the figures as JSON here")
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.which == "startup-trial":
        print(json.dumps(startup_trial(args.args[0])))
        return 0
    if args.which == "startup":
        rows = startup(args.args or ["gdn2", "carve"])
        for r in rows:
            print(f"{r['preset']:6s} ({r['backend']}): model built -> first step done: cold cache {r['cold_s']:.2f} s, "
                  f"warm cache {r['warm_s']:.2f} s (target <= 5 s warm); whole process (start-up, imports, "
                  f"3 steps, evaluation): {r['cold_process_s']:.1f} s / {r['warm_process_s']:.1f} s; "
                  f"trials {' / '.join(r['status'])}")
        _write(args.out, rows)
        return 0
    from carvelab.trials.sweep import scheduler

    if args.which == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("bench_sweep gpu needs a CUDA GPU on this machine (it samples that GPU's utilisation)")
            return 2
    root = Path(args.root or tempfile.mkdtemp(prefix="carvelab-bench-"))
    scheduler.start_ray()
    try:
        if args.which == "overhead":
            plan = [(1.0, 2)] if args.quick else [(2.0, 10), (30.0, 3)]
            for seconds, trials in plan:
                r = overhead(seconds, trials, root)
                print(f"{seconds:>5.0f}-s trials x{r['trials']}: loop {r['loop_s']:.1f} s, inside trials "
                      f"{r['inside_trials_s']:.1f} s -> orchestration overhead {100 * r['overhead_fraction']:.2f}% "
                      f"of trial time" + ("  (target <= 2% for 30-s trials)" if seconds >= 30 else ""))
        elif args.which == "scale":
            from carvelab.trials.bench_scale import print_scale, scale

            r = scale(200 if args.quick else args.trials, root, args.args)
            print_scale(r)
            _write(args.out, r)
        elif args.which == "gpu":
            r = gpu_sweep(args.sweep, root, args.args)
            print(f"{r['sweep']}: {r['counts']} in {r['loop_s']:.0f} s at {r['gpus_per_trial']} GPU per trial; "
                  f"at most {r['max_concurrent_trials']} trials at once (mean {r['mean_concurrent_trials']:.2f} while "
                  f"any ran); GPU utilisation mean {r['gpu_util_mean_pct']:.0f}%, median "
                  f"{r['gpu_util_median_pct']:.0f}%; peak GPU memory {r['gpu_mem_peak_mb']:.0f} MB")
            _write(args.out, r)
        else:
            r = pruning(root, 40 if args.quick else 200)
            print(f"training steps: pruned {r['steps_spent']['pareto']} vs unpruned {r['steps_spent']['none']} "
                  f"-> {100 * r['steps_fraction']:.0f}% of the steps (target <= 40%)")
            print(f"hypervolume: pruned {r['hypervolume']['pareto']:.4g} vs unpruned {r['hypervolume']['none']:.4g} "
                  f"-> {100 * r['hypervolume_fraction']:.1f}% (target >= 95%)")
    finally:
        scheduler.stop_ray()
    print(f"sweeps kept in {root}")
    return 0


def _write(path, data) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
