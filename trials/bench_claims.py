"""A claim study's (or a suite sweep's) runs outside Ray and MLflow, then its verdicts or
suite scores (prints, does not assert).

    python -m carvelab.trials.bench_claims run NAME [--size gpu] --out runs.jsonl [--workers 4]
    python -m carvelab.trials.bench_claims verdict NAME runs.jsonl [--size gpu] [--md out.md]
    python -m carvelab.trials.bench_claims suite NAME runs.jsonl [--md out.md]

Overrides (``key=value``) go to both: ``verdict`` must see the study ``run`` trained (its
seeds and tune values decide which runs are complete).

``run`` trains every planned run of the study (``study.planned`` + ``points.point_config``:
the configs ``carvelab claims run`` trains), ``--workers`` at a time in processes sharing
the machine (``bench_tuning.run_planned``); each finished run is appended to the JSON-lines
file at once, and a rerun skips what is there. It serves machines without Ray or MLflow.
``verdict`` reads the file as the sweep's trial table and applies the same selection and
verdicts as ``carvelab claims verdict`` (``dashboards/claims.py``); ``suite`` the same
scoring as ``carvelab suite`` (``dashboards/suite.py``: best tuned run per setting, mean per
task, mean of tasks, on the test split where every completed run has it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.trials.bench_tuning import run_planned, runs_frame


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
    for mode in ("verdict", "suite"):
        v = sub.add_parser(mode)
        v.add_argument("name")
        v.add_argument("path", type=Path)
        v.add_argument("--size", default=None)
        v.add_argument("--md", type=Path, default=None)
        v.add_argument("overrides", nargs="*", help="the overrides the runs were made with")
    args, extra = parser.parse_known_args(argv)
    if any("=" not in e or e.startswith("-") for e in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = list(args.overrides) + extra
    if args.mode == "run":
        os.environ.setdefault("CARVELAB_AUTOTUNE", "0")
        run_planned(load_sweep(args.name, args.overrides, size=args.size), args.out, args.workers)
        return 0
    if args.mode == "suite":
        from carvelab.dashboards.suite import suite_markdown

        text = suite_markdown(*suite_scores(args.path, args.name, args.size, args.overrides))
    else:
        from carvelab.dashboards.claims import claims_markdown

        text = claims_markdown(verdicts(args.path, args.name, args.size, args.overrides))
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
