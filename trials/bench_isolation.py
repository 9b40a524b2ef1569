"""Speed measured in isolation vs while sharing the device (prints, does not assert).

    python -m carvelab.trials.bench_isolation                      # CPU: 8 runs, 2 at a time (~3 min)
    python -m carvelab.trials.bench_isolation --threads 2          # CPU, each run wanting both cores
    python -m carvelab.trials.bench_isolation --device cuda        # GPU: 8 runs, 4 at a time

Trains the same trial config (same seed: the same computation) ``--runs`` times, ``--workers``
at a time in separate processes sharing the device, as a sweep's trials share a node or a
GPU. Each run reports ``tokens_per_s`` (its isolated timing window, trials/timing_slot.py)
and ``tokens_per_s_contended`` (its other steps, with the neighbours). Prints both figures'
spread over the runs (coefficient of variation, largest deviation from the median): if the
isolation works, the isolated figure varies less and, on a GPU, two isolated measurements of
the config agree within a few percent.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from carvelab.trials.bench_tuning import train_config

CONFIGS = {
    "cpu": {"preset": "gdn2", "model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "chunk_size": 32,
                                          "backend": "torch"},
            "task": {"name": "mqar", "vocab_size": 64, "seq_len": 128, "num_kv_pairs": 8, "train_examples": 2000,
                     "val_examples": 64, "test_examples": 64},
            "train": {"steps": 120, "batch_size": 16, "eval_every": 60, "timing_steps": 20, "device": "cpu"}},
    "cuda": {"preset": "gdn2", "model": {"d_model": 256, "n_layers": 4, "n_heads": 4, "chunk_size": 64},
             "task": {"name": "mqar", "vocab_size": 512, "seq_len": 256, "num_kv_pairs": 16,
                      "train_examples": 20000, "val_examples": 256, "test_examples": 256},
             "train": {"steps": 600, "batch_size": 64, "eval_every": 200, "timing_steps": 30, "device": "cuda",
                       "dtype": "bfloat16"}},
}


def spread(values: list[float]) -> dict[str, float]:
    """Coefficient of variation and the largest relative deviation from the median."""
    med = statistics.median(values)
    return {"median": med, "cv": statistics.pstdev(values) / statistics.mean(values),
            "max_dev": max(abs(v - med) / med for v in values)}


def run(device: str, runs: int, workers: int, steps: int | None, threads: int | None = None) -> dict:
    from carvelab.search_space.loading import load_trial_config

    config = json.loads(json.dumps(CONFIGS[device]))
    if steps:
        config["train"]["steps"] = steps
    config_dict = __import__("dataclasses").asdict(load_trial_config(config))
    threads = threads or max(1, (os.cpu_count() or 1) // workers)  # default: the cores split between workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(train_config, [config_dict] * runs, [threads] * runs))
    done = [r for r in results if r["status"] == "completed"]
    iso = [r["metrics"]["tokens_per_s"] for r in done]
    shared = [r["metrics"]["tokens_per_s_contended"] for r in done if "tokens_per_s_contended" in r["metrics"]]
    return {"device": device, "runs": runs, "workers": workers, "threads_per_run": threads, "completed": len(done), "config": config,
            "isolated": iso, "contended": shared, "isolated_spread": spread(iso) if iso else {},
            "contended_spread": spread(shared) if shared else {}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_isolation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: 2 on cpu, 4 on cuda")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per run (default: the cores split between the workers)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("CARVELAB_AUTOTUNE", "0")
    report = run(args.device, args.runs, args.workers or (2 if args.device == "cpu" else 4), args.steps,
                 args.threads)
    for name in ("isolated", "contended"):
        s = report[f"{name}_spread"]
        if s:
            print(f"{name:9s} tokens/s: median {s['median']:,.0f}  cv {100 * s['cv']:.1f}%  "
                  f"largest deviation from the median {100 * s['max_dev']:.1f}%  ({len(report[name])} runs)")
    if report["isolated_spread"] and report["contended_spread"]:
        print(f"cv ratio isolated / contended: {report['isolated_spread']['cv'] / report['contended_spread']['cv']:.2f} "
              f"({report['workers']} runs at a time on {report['device']})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
