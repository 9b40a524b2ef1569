"""A claim study's (or a suite sweep's) runs outside Ray and MLflow, then its verdicts or
suite scores (prints, does not assert).

    python -m carvelab.trials.bench_claims run NAME [--size gpu] --out runs.jsonl [--workers 4]
    python -m carvelab.trials.bench_claims verdict NAME runs.jsonl [--size gpu] [--md out.md]
    python -m carvelab.trials.bench_claims suite NAME runs.jsonl [--md out.md]
    python -m carvelab.trials.bench_claims points NAME runs.jsonl [--metrics a,b] [--md out.md]

Overrides (``key=value``) go to both: ``verdict`` must see the study ``run`` trained (its
seeds and tune values decide which runs are complete).

``run`` trains every planned run of the study (``points.planned`` + ``points.point_config``:
the configs ``carvelab claims run`` trains), ``--workers`` at a time in processes sharing
the machine (``bench_tuning.run_planned``); each finished run is appended to the JSON-lines
file at once with its trial config, and a rerun skips what is there; a file whose runs were
trained with other configs (another ``--size``, other overrides) is refused with exit code 2,
naming the key. It serves machines without Ray or MLflow.
``verdict`` reads the file as the sweep's trial table and applies the same selection and
verdicts as ``carvelab claims verdict`` (``dashboards/claims.py``); ``suite`` the same
scoring as ``carvelab suite`` (``dashboards/suite.py``: best tuned run per setting, mean per
task, mean of tasks, on the test split where every completed run has it); ``points`` one
row per point of the sweep (a grid's cells): at its tune values selected on validation, the
seed mean and 95% interval of each metric (the told objectives and their test-split
figures unless ``--metrics`` names others), and the runs that failed with their reason.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from carvelab.search_space.points import planned
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.bench_tuning import OtherConfigs, run_planned, runs_frame


def _sweep_and_runs(path: Path, name: str, size: str | None, overrides):
    """(the sweep as the runs were made, the runs in ``path`` as a trials frame)."""
    spec = load_sweep(name, overrides, size=size)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return spec, runs_frame(rows, [o.metric for o in spec.objectives])


def verdicts(path: Path, name: str, size: str | None, overrides=()) -> list[dict]:
    from carvelab.dashboards.claims import claim_rows

    return claim_rows(*_sweep_and_runs(path, name, size, overrides))


def suite_scores(path: Path, name: str, size: str | None, overrides=()) -> tuple[str, list[dict]]:
    """(the reported metric, ``dashboards.suite.suite_rows``) of the runs in ``path``."""
    from carvelab.dashboards.frame import with_reported
    from carvelab.dashboards.suite import suite_rows

    spec, df = _sweep_and_runs(path, name, size, overrides)
    df, reported = with_reported(df, [(o.metric, o.direction) for o in spec.objectives])
    return reported[0][0], suite_rows(spec, df, reported[0][0])


def point_rows(path: Path, name, size: str | None, overrides=(), metrics=()) -> tuple[list[str], list[dict]]:
    """(the metrics, one row per point, in the order of the sweep's axes and values):
    ``point``, ``tune`` (selected on validation), per
    metric ``dashboards.uncertainty.mean_interval`` over the point's completed seeds, and
    ``failed`` ({error: runs}) for its runs that did not complete."""
    import polars as pl

    from carvelab.dashboards.claims import _column
    from carvelab.dashboards.selection import select_tuned
    from carvelab.dashboards.uncertainty import mean_interval

    spec, df = _sweep_and_runs(path, name, size, overrides)
    told = [o.metric for o in spec.objectives]
    if not metrics:
        metrics = [m for t in told for m in (t, "test_" + t.removeprefix("val_")) if _column(df, m)]
        metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if not _column(df, m)]
    if unknown:
        raise SystemExit(f"--metrics: {unknown} are in no run of {path}; its runs logged "
                         f"{sorted(c.removeprefix('m.') for c in df.columns if c.startswith('m.'))}")
    chosen = select_tuned(df, spec).trials if len(df.filter(pl.col("state") == "COMPLETE")) else df.head(0)
    rows = []
    for point in df["point"].unique(maintain_order=True).to_list():
        runs = chosen.filter(pl.col("point") == point)
        failed = df.filter((pl.col("point") == point) & (pl.col("state") != "COMPLETE"))
        row = {"point": json.loads(point), "tune": runs["tune"][0] if len(runs) else None,
               "failed": dict(sorted(failed.group_by("error").len().rows(), key=str)) if len(failed) else {}}
        for m in metrics:
            row[m] = mean_interval(runs[_column(df, m)].to_list() if len(runs) else [])
        rows.append(row)
    order = {}
    for point, *_ in planned(spec):
        order.setdefault(json.dumps(point, sort_keys=True), len(order))
    rows.sort(key=lambda r: order.get(json.dumps(r["point"], sort_keys=True), len(order)))
    axes = [p.name for p in spec.params]
    return metrics, [dict(r, point={a: r["point"][a] for a in axes if a in r["point"]} | r["point"]) for r in rows]


def _interval_cell(r: dict) -> str:
    if not r["n"]:
        return "–"
    if r["n"] < 2 or r["se"] == 0:
        return f"{r['mean']:.6g} (n {r['n']})"
    return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] (n {r['n']})"


def points_markdown(metrics: list[str], rows: list[dict]) -> str:
    axes = list(dict.fromkeys(k for r in rows for k in r["point"]))
    lines = ["Per point: seed mean [95% interval] (n seeds), at the tune values selected on validation.", "",
             "| " + " | ".join(axes + metrics) + " | tune | not completed |", "|---" * (len(axes) + len(metrics) + 2) + "|"]
    for r in rows:
        failed = "; ".join(f"{n}: {why}" for why, n in r["failed"].items())
        lines.append("| " + " | ".join([str(r["point"].get(a, "")) for a in axes] + [_interval_cell(r[m]) for m in metrics]
                                       + [r["tune"] if r["tune"] not in (None, "{}") else "", failed]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--size", default=None)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the study")
    for mode in ("verdict", "suite", "points"):
        v = sub.add_parser(mode)
        v.add_argument("name")
        v.add_argument("path", type=Path)
        v.add_argument("--size", default=None)
        v.add_argument("--md", type=Path, default=None)
        v.add_argument("overrides", nargs="*", help="the overrides the runs were made with")
        if mode == "points":
            v.add_argument("--metrics", default="", help="comma-separated metrics (default: the objectives, "
                                                         "validation and test)")
    args, extra = parser.parse_known_args(argv)
    if any("=" not in e or e.startswith("-") for e in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = list(args.overrides) + extra
    if args.mode == "run":
        os.environ.setdefault("CARVELAB_AUTOTUNE", "0")
        try:
            run_planned(load_sweep(args.name, args.overrides, size=args.size), args.out, args.workers)
        except OtherConfigs as exc:  # a results file of other configs: refused, nothing trained
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.mode == "suite":
        from carvelab.dashboards.suite import suite_markdown

        text = suite_markdown(*suite_scores(args.path, args.name, args.size, args.overrides))
    elif args.mode == "points":
        metrics = [m for m in args.metrics.split(",") if m]
        text = points_markdown(*point_rows(args.path, args.name, args.size, args.overrides, metrics))
    else:
        from carvelab.dashboards.claims import claims_markdown

        text = claims_markdown(verdicts(args.path, args.name, args.size, args.overrides))
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
