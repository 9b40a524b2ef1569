"""Does tuning per point remove seed-to-seed rank flips? (prints, does not assert)

    python -m carvelab.trials.bench_tuning run --out runs.jsonl         # the runs (a GPU: ~5 minutes)
    python -m carvelab.trials.bench_tuning analyse runs.jsonl           # the verdict, anywhere

``run`` trains every planned run of a tuned ablation sweep (default ``tuned_ablation_gpu``:
GDN-2, KDA, CARVE and the Bayesian Layer on Update-MQAR, 3 seeds x 3 learning rates): the
configs ``carvelab sweep run`` would train (``points.planned`` + ``points.point_config``),
in ``--workers`` processes sharing the GPU (the sweep's fractional GPUs), without Ray,
MLflow or Optuna. Each finished run is appended to the JSON-lines file at once, so an
interrupted run keeps what it finished (and a rerun skips it).

``analyse`` applies the sweep's own selection (``dashboards.selection``: per point the
learning rate with the best validation seed mean) and compares, on the test split:

- per fixed learning rate, and with the tuned choice: each point's seed mean ± the half-width
  of its 95% interval;
- rank flips: over every pair of points and every pair of seeds, the fraction of pairs whose
  order on test accuracy differs between the two seeds (ties are not counted); and the same
  counting only differences of at least ``MIN_DIFF`` in both seeds (near-ties at the ceiling,
  0.998 against 1.000, flip without meaning anything);
- the spread: each point's standard deviation over seeds, averaged over the points.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from carvelab.search_space.points import point_config
from carvelab.search_space.sweep_loading import load_sweep

MIN_DIFF = 0.01  # accuracy: one point of a hundred


def _key(label: str, point: dict, seed: int, tune: dict) -> str:
    """One planned run: its point (a grid sweep's runs all have the label ''), seed and tune values."""
    return json.dumps({"label": label, "point": point, "seed": seed, "tune": tune}, sort_keys=True)


class OtherConfigs(ValueError):
    """A results file holds a run trained with another config than the sweep gives it now."""


def run_config(spec, point: dict, seed: int, tune: dict) -> dict:
    """The trial config of one planned run as a plain mapping, as a results row stores it."""
    return json.loads(json.dumps(dataclasses.asdict(point_config(spec, point, seed, tune))))


def pending_runs(spec, out: Path) -> dict:
    """{key: (point, seed, label, tune)} of the sweep's planned runs not yet in ``out``.

    A run already in ``out`` counts as done only if it was trained with the config the sweep
    gives it now: each row keeps its trial config (``config``), and a value that differs (say
    the file was written at another ``--size`` or with other overrides) is refused, naming the
    key and both values, rather than mixed into the results. Keys only one side has (a field
    added to the configs since) are not compared, nor are rows written before rows kept it."""
    from carvelab.search_space.points import planned

    runs = {_key(label, point, seed, tune): (point, seed, label, tune) for point, seed, label, tune in planned(spec)}
    done = set()
    if out.exists():
        for line_no, line in enumerate(out.read_text().splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            key = _key(r["label"], r["point"], r["seed"], r["tune"])
            if key in runs and "config" in r:
                point, seed, _, tune = runs[key]
                differs = config_difference(r["config"], run_config(spec, point, seed, tune))
                if differs:
                    path, then, wanted = differs
                    raise OtherConfigs(f"{out}, line {line_no}: this run ({r['label'] or r['point']}, seed {r['seed']}, "
                                     f"{r['tune']}) was trained with {path}={then!r}; the sweep now gives it {wanted!r}. "
                                     f"Write to another --out, or remove that file's rows to retrain them")
            done.add(key)
    return {key: run for key, run in runs.items() if key not in done}


def config_difference(then: dict, now: dict, prefix: str = ""):
    """The first (dotted key, value then, value now) where two trial configs differ, over the
    keys both have; None where they agree."""
    for key in sorted(then.keys() & now.keys()):
        a, b = then[key], now[key]
        if isinstance(a, dict) and isinstance(b, dict):
            found = config_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def train_config(config_dict: dict, threads: int = 2) -> dict:
    """Train one trial config (a plain mapping) in this process with ``threads`` CPU threads; a
    picklable summary of the result."""
    import torch

    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial

    torch.set_num_threads(threads)
    started = time.perf_counter()
    result = run_trial(load_trial_config(config_dict))
    return {"status": result.status, "reason": result.reason, "steps": result.steps, "metrics": result.metrics,
            "backend": result.backend, "precision": result.precision, "step_mode": result.step_mode,
            "seconds": time.perf_counter() - started}


def run(sweep: str, out: Path, workers: int, steps: int | None, size: str | None = None) -> None:
    """Train every planned run of ``sweep`` (at ``size``; ``steps`` overrides base.train.steps)."""
    run_planned(load_sweep(sweep, [f"base.train.steps={steps}"] if steps else [], size=size), out, workers)


def run_planned(spec, out: Path, workers: int) -> None:
    """Train every planned run of the sweep ``spec`` not yet in ``out``, appending each to it."""
    jobs = {key: (point, seed, label, tune, run_config(spec, point, seed, tune))
            for key, (point, seed, label, tune) in pending_runs(spec, out).items()}
    print(f"{len(jobs)} runs to train (the rest already in {out}), {workers} at a time", flush=True)
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        threads = max(1, (os.cpu_count() or 1) // workers)  # no oversubscription of the cores
        futures = {pool.submit(train_config, job[4], threads): job for job in jobs.values()}
        for future in as_completed(futures):
            point, seed, label, tune, config = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # recorded, as a sweep records a failed trial
                result = {"status": "failed", "reason": type(exc).__name__, "metrics": {}, "error": str(exc)[:500]}
            row = {"label": label, "point": point, "seed": seed, "tune": tune, **result, "config": config}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            m = result.get("metrics", {})
            name = label or ",".join(f"{k}={v}" for k, v in point.items())
            print(f"{name:60s} seed {seed} {tune} -> {result['status']} val {m.get('val_accuracy', math.nan):.3f} "
                  f"test {m.get('test_accuracy', math.nan):.3f} ({result.get('seconds', 0):.0f} s)", flush=True)


def runs_frame(rows: list[dict], told: list[str]):
    """JSON-lines runs as the trials frame the dashboards read: the told objectives as columns
    and every logged metric as ``m.<metric>``."""
    import polars as pl

    metrics = sorted({k for r in rows for k in r.get("metrics", {})})
    return pl.DataFrame([{
        "number": i, "state": "COMPLETE" if r["status"] == "completed" else "FAIL", "seed": r["seed"],
        "label": r["label"], "point": json.dumps(r["point"], sort_keys=True),
        "tune": json.dumps(r["tune"], sort_keys=True),
        "error": r.get("error"),
        **{m: r["metrics"].get(m) for m in told},
        **{f"m.{m}": r["metrics"].get(m) for m in metrics},
    } for i, r in enumerate(rows)], schema_overrides={f"m.{m}": pl.Float64 for m in metrics}
        | {"error": pl.String}
        | {m: pl.Float64 for m in told}, infer_schema_length=None)


def _frame(rows: list[dict], told: str):
    """``runs_frame`` with the told objective's test figure as ``test``."""
    import polars as pl

    df = runs_frame(rows, [told])
    test = f"m.test_{told[4:]}"
    return df.with_columns(pl.col(test).alias("test") if test in df.columns else pl.lit(None, pl.Float64).alias("test"))


def flip_fraction(scores: dict[str, dict[int, float]], min_diff: float = 0.0) -> tuple[float, int]:
    """``scores[point][seed]``: the fraction of (point pair, seed pair) whose order differs between
    the two seeds, and how many such comparisons were made (ties, and differences smaller than
    ``min_diff`` in either seed, are not counted)."""
    flips = total = 0
    for a, b in itertools.combinations(sorted(scores), 2):
        seeds = sorted(set(scores[a]) & set(scores[b]))
        for s, t in itertools.combinations(seeds, 2):
            d1, d2 = scores[a][s] - scores[b][s], scores[a][t] - scores[b][t]
            if d1 == 0 or d2 == 0 or abs(d1) < min_diff or abs(d2) < min_diff:
                continue
            total += 1
            flips += (d1 > 0) != (d2 > 0)
    return (flips / total if total else math.nan), total


def analyse(path: Path, sweep: str) -> dict:
    import polars as pl

    from carvelab.dashboards.selection import select_tuned, selection_objective
    from carvelab.dashboards.uncertainty import mean_interval

    spec = load_sweep(sweep)
    told, _ = selection_objective(spec)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    df = _frame(rows, told)
    done = df.filter(pl.col("state") == "COMPLETE")
    chosen = select_tuned(df, spec).trials
    settings = {json.loads(t)["train.lr"] if t != "{}" else t: done.filter(pl.col("tune") == t)
                for t in done["tune"].unique(maintain_order=True).to_list()}
    settings = dict(sorted(settings.items(), key=lambda kv: str(kv[0])))
    settings["tuned"] = chosen
    report = {"sweep": sweep, "runs": len(rows), "completed": len(done), "metric": "test_" + told[4:],
              "selected_on": told, "settings": {}}
    for name, part in settings.items():
        scores: dict[str, dict[int, float]] = {}
        for r in part.iter_rows(named=True):
            if r["test"] is not None:
                scores.setdefault(r["label"], {})[r["seed"]] = r["test"]
        frac, n = flip_fraction(scores)
        clear, n_clear = flip_fraction(scores, MIN_DIFF)
        points = {}
        for label, by_seed in scores.items():
            stats = mean_interval(list(by_seed.values()))
            lr = part.filter(pl.col("label") == label)["tune"][0]
            points[label] = {**stats, "tune": json.loads(lr), "by_seed": by_seed}
        stds = [statistics.stdev(p["by_seed"].values()) for p in points.values() if len(p["by_seed"]) > 1]
        report["settings"][str(name)] = {"flip_fraction": frac, "comparisons": n, "clear_flip_fraction": clear,
                                         "clear_comparisons": n_clear, "min_diff": MIN_DIFF,
                                         "mean_seed_std": statistics.mean(stds) if stds else math.nan,
                                         "points": points}
    return report


def markdown(report: dict) -> str:
    lines = [f"Sweep `{report['sweep']}`: {report['completed']}/{report['runs']} runs completed; "
             f"{report['metric']} (test split), seed mean ± half-width of the 95% interval; "
             f"tuned = per point the learning rate with the best {report['selected_on']} seed mean.", ""]
    labels = sorted({label for s in report["settings"].values() for label in s["points"]},
                    key=lambda l: (l != "baseline", l))
    names = {label: "baseline" if label == "baseline" else f"change {i}" for i, label in enumerate(labels)}
    lines += [f"- {names[l]}: `{l}`" for l in labels] + [""]
    lines += ["| learning rate | rank flips between seeds | flips, differences >= "
              f"{MIN_DIFF} | mean seed std | " + " | ".join(names[l] for l in labels) + " |",
              "|---|---|---|---|" + "---|" * len(labels)]
    for name, s in report["settings"].items():
        cells = []
        for label in labels:
            p = s["points"].get(label)
            if p is None:
                cells.append("–")
                continue
            half = p["hi"] - p["mean"] if math.isfinite(p.get("hi", math.nan)) else math.nan
            lr = f" (lr {p['tune'].get('train.lr')})" if name == "tuned" else ""
            cells.append(f"{p['mean']:.3f} ± {half:.3f}{lr}")
        lines.append(f"| {name} | {_share(s['flip_fraction'], s['comparisons'])} | "
                     f"{_share(s['clear_flip_fraction'], s['clear_comparisons'])} | {s['mean_seed_std']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _share(fraction: float, count: int) -> str:
    return f"0 of {count}" if not count else f"{100 * fraction:.0f}% of {count}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_tuning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sweep", default="tuned_ablation_gpu")
    r.add_argument("--out", type=Path, default=Path("tuning_runs.jsonl"))
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--steps", type=int, default=None, help="override base.train.steps (smoke runs)")
    a = sub.add_parser("analyse")
    a.add_argument("path", type=Path)
    a.add_argument("--sweep", default="tuned_ablation_gpu")
    a.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.mode == "run":
        os.environ.setdefault("CARVELAB_AUTOTUNE", "0")
        try:
            run(args.sweep, args.out, args.workers, args.steps)
        except OtherConfigs as exc:  # refused, nothing trained
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    report = analyse(args.path, args.sweep)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
