"""Aggregate throughput per GPU: trials per hour and training tokens per second of a sweep's
trials sharing one GPU, before and after the GPU step work, in one run (prints, does not assert).

    python -m carvelab.trials.bench_aggregate --out aggregate.json               # quickstart_gpu, 16 trials, 4 at a time
    python -m carvelab.trials.bench_aggregate --trials 8 base.train.steps=300    # overrides go to the sweep

The same ``--trials`` points of the sweep's grid (a fixed sample, ``--sample-seed``; the
sweep's first seed) are trained twice, ``--workers`` at a time in processes sharing the GPU
(the sweep's fractional GPUs, as Ray places them, without Ray, MLflow or Optuna):

    before   what the trial loop did before: exact products (3xTF32), an eager step (no CUDA
             graph), the content gate on its per-chunk loop (``CARVELAB_FUSED_CONTENT=0``), the
             short convolutions and norms on torch ops (``CARVELAB_FUSED_CONV=0``,
             ``CARVELAB_FUSED_NORM=0``)
    after    the trial as configured now (the sweep's precision, whole-step CUDA graph, the
             fused content-gate, convolution and norm kernels)
    after_mps  after, with the trials' processes as clients of an MPS daemon started for the
             variant (``trials/mps.py``): their kernels run side by side instead of taking
             turns. Not in the default list; ``--variants after,after_mps`` is its A/B.

Per variant: wall time from the first trial's start to the last one's end, trials per hour,
aggregate training tokens per second (every trial's trained steps x batch x sequence length,
summed, over the wall time), the GPU's utilisation sampled by NVML every 0.5 s, and each
trial's own figures. A trial's wall-time budget (``train.max_seconds``) applies as in a sweep,
so a variant that steps slower also trains fewer steps; tokens per second counts what ran.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

from carvelab.search_space.points import grid_points, point_config
from carvelab.search_space.sweep_loading import load_sweep

VARIANTS = {
    "before": {"precision": "exact", "cuda_graph": False,
               "env": {"CARVELAB_FUSED_CONTENT": "0", "CARVELAB_FUSED_CONV": "0", "CARVELAB_FUSED_NORM": "0",
                       "CARVELAB_JOINT_PROJ": "0", "CARVELAB_FUSED_GATES": "0", "CARVELAB_FUSED_CE": "0",
                       "CARVELAB_CAST_ONCE": "0"}},
    "after": {"precision": None, "cuda_graph": True,
              "env": {"CARVELAB_FUSED_CONTENT": "1", "CARVELAB_FUSED_CONV": "1", "CARVELAB_FUSED_NORM": "1"}},
}
VARIANTS["after_mps"] = {**VARIANTS["after"], "mps": True}


def sample_points(spec, trials: int, sample_seed: int) -> list[dict]:
    """``trials`` distinct points of the sweep's grid, the same for every variant."""
    points = grid_points(spec)
    if trials > len(points):
        raise ValueError(f"--trials {trials}: the sweep {spec.name!r} has only {len(points)} grid points")
    return random.Random(sample_seed).sample(points, trials)


def variant_configs(spec, points: list[dict], variant: str) -> list[dict]:
    """The trial configs (plain mappings) of ``points`` in ``variant``."""
    v = VARIANTS[variant]
    configs = []
    for point in points:
        cfg = point_config(spec, point, spec.seeds[0], {})
        if v["precision"] is not None:
            cfg.model = dataclasses.replace(cfg.model, precision=v["precision"])
        cfg.train = dataclasses.replace(cfg.train, cuda_graph=v["cuda_graph"])
        configs.append(dataclasses.asdict(cfg))
    return configs


def _set_env(env: dict) -> None:
    os.environ.update(env)


def _train(config: dict, threads: int) -> dict:
    from carvelab.trials.bench_tuning import train_config

    started = time.time()
    return {**train_config(config, threads), "started_at": started, "finished_at": time.time()}


def trained_tokens(config: dict, result: dict) -> float:
    """Tokens a trial trained on: its steps done x batch x sequence length."""
    steps = result.get("metrics", {}).get("step") or result.get("steps") or 0
    return float(steps) * config["train"]["batch_size"] * config["task"]["seq_len"]


def summarise(configs: list[dict], results: list[dict], samples: list[tuple]) -> dict:
    """A variant's aggregate figures from its trials' results and the GPU samples."""
    spans = [(r["started_at"], r["finished_at"]) for r in results]
    wall = max(b for _, b in spans) - min(a for a, _ in spans)
    tokens = sum(trained_tokens(c, r) for c, r in zip(configs, results))
    completed = sum(r["status"] == "completed" for r in results)
    busy = [u for t, u, _ in samples if any(a <= t < b for a, b in spans)]
    return {
        "wall_s": wall, "trials": len(results), "completed": completed,
        "trials_per_hour": 3600.0 * len(results) / wall, "tokens_per_s": tokens / wall, "tokens": tokens,
        "gpu_util_mean_pct": statistics.fmean(busy) if busy else None,
        "gpu_util_median_pct": statistics.median(busy) if busy else None,
        "gpu_mem_peak_mb": max((m for _, _, m in samples), default=None),
        "per_trial": [{"status": r["status"], "reason": r.get("reason"), "seconds": r.get("seconds"),
                       "steps": r.get("metrics", {}).get("step"), "step_mode": r.get("step_mode"),
                       "precision": r.get("precision"),
                       **{m: r.get("metrics", {}).get(m) for m in ("val_accuracy", "tokens_per_s", "first_step_s")}}
                      for r in results],
    }


def run_variant(configs: list[dict], variant: str, workers: int, sampler_cls=None) -> dict:
    """Train ``configs`` ``workers`` at a time in fresh processes with the variant's environment."""
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    results: list[Optional[dict]] = [None] * len(configs)
    env = dict(VARIANTS[variant]["env"])
    with contextlib.ExitStack() as stack:
        if VARIANTS[variant].get("mps"):
            from carvelab.trials.mps import mps_daemon

            env.update(stack.enter_context(mps_daemon()))
        sampler = stack.enter_context(sampler_cls()) if sampler_cls else None
        pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                                       initializer=_set_env, initargs=(env,)))
        futures = {pool.submit(_train, c, threads): i for i, c in enumerate(configs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as exc:  # recorded, as a sweep records a failed trial
                now = time.time()
                results[i] = {"status": "failed", "reason": type(exc).__name__, "error": str(exc)[:300],
                              "metrics": {}, "started_at": now, "finished_at": now}
            r = results[i]
            print(f"{variant:9s} trial {i:2d}: {r['status']:9s} steps {r.get('metrics', {}).get('step')} "
                  f"in {r.get('seconds', 0) or 0:.0f} s", flush=True)
    return summarise(configs, results, sampler.samples if sampler else [])


def print_summary(out: dict) -> None:
    print(f"\n{out['sweep']}: {out['trials']} trials, {out['workers']} at a time on {out.get('device')}")
    print(f"{'variant':10s} {'wall s':>8s} {'done':>5s} {'trials/h':>9s} {'tokens/s':>11s} {'x before':>8s} "
          f"{'x after':>7s} {'GPU util %':>10s} {'mem MB':>8s}")
    base, after = (out["variants"].get(v, {}).get("tokens_per_s") for v in ("before", "after"))
    for name, v in out["variants"].items():
        util = v["gpu_util_mean_pct"]
        print(f"{name:10s} {v['wall_s']:8.1f} {v['completed']:5d} {v['trials_per_hour']:9.1f} {v['tokens_per_s']:11.0f} "
              f"{(v['tokens_per_s'] / base) if base else float('nan'):8.2f} "
              f"{(v['tokens_per_s'] / after) if after else float('nan'):7.2f} "
              f"{util if util is not None else float('nan'):10.1f} {v['gpu_mem_peak_mb'] or float('nan'):8.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_aggregate", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="sweep overrides, key=value (e.g. base.train.steps=300)")
    p.add_argument("--sweep", default="quickstart_gpu")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="trials at a time (default: the sweep's concurrency)")
    p.add_argument("--variants", default="before,after", help=f"comma-separated of {list(VARIANTS)}")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--no-gpu-sampler", action="store_true", help="skip NVML sampling (a machine without a GPU)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"--variants: {bad or variants} not allowed; choose from {list(VARIANTS)}")
    spec = load_sweep(args.sweep, args.overrides)
    workers = args.workers or spec.resources.concurrency
    points = sample_points(spec, args.trials, args.sample_seed)
    sampler_cls = None
    if not args.no_gpu_sampler:
        from carvelab.trials.bench_sweep import GpuSampler

        sampler_cls = GpuSampler
    out = {"sweep": spec.name, "trials": len(points), "workers": workers, "points": points,
           "overrides": args.overrides, "device": _device_name(), "variants": {}}
    for variant in variants:
        out["variants"][variant] = run_variant(variant_configs(spec, points, variant), variant, workers, sampler_cls)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2))
    print_summary(out)
    return 0


def _device_name() -> Optional[str]:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
