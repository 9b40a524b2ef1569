"""Sweep benchmarks (print, don't assert), each against a baseline measured in the same run.

    python -m carvelab.trials.bench_sweep overhead          # 2-s and 30-s trials, ~3 minutes
    python -m carvelab.trials.bench_sweep pruning           # Pareto pruning vs none, ~5 minutes
    python -m carvelab.trials.bench_sweep overhead --quick  # seconds-long smoke run

overhead: trials bounded by wall time (``train.max_seconds``), one at a time; the
orchestration overhead (Ray scheduling, MLflow and Optuna writes, result handling) is
the driver's loop time not spent inside trials, as a fraction of the time inside trials.

pruning: the same grid (same seeds) with ``pruner: pareto`` and with ``pruner: none``;
prints training steps spent and the hypervolume reached (one reference point for both).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
from pathlib import Path

from carvelab.dashboards.frame import open_sweep, trials_frame
from carvelab.dashboards.pareto import hypervolume, reference_point
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials import scheduler
from carvelab.trials.driver import run_sweep

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
    data = _sweep(f"overhead-{seconds:g}s", space={"train.seed": list(range(trials))})
    data["base"]["train"].update(steps=10**6, max_seconds=seconds, eval_every=10**6)
    summary = run_sweep(load_sweep(data), root)
    results = [json.loads(p.read_text()) for p in (Path(summary.sweep_dir) / "results").glob("*.json")]
    inside = sum(r["finished_at"] - r["started_at"] for r in results)
    return {"trial_seconds": seconds, "trials": len(results), "loop_s": summary.loop_s, "inside_trials_s": inside,
            "overhead_fraction": (summary.loop_s - inside) / inside}


def pruning(root: Path, steps: int) -> dict:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["overhead", "pruning"])
    p.add_argument("--quick", action="store_true", help="small sizes: checks that the benchmark runs")
    p.add_argument("--root", default=None, help="where to keep the sweeps (default: a temporary folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
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


if __name__ == "__main__":
    raise SystemExit(main())
