"""The ``carvelab`` command.

    carvelab --version
    carvelab train CONFIG.yaml [key=value ...]     one trial in-process (no Ray)
    carvelab sweep run FILE|NAME [key=value ...] [--address ADDR] [--root DIR]
    carvelab sweep status NAME [--root DIR]
    carvelab sweep check NAME [--root DIR] [--repair]   Optuna vs MLflow; exit 1 on disagreement
    carvelab pareto NAME [--root DIR]               the front as a table; refreshes MLflow
    carvelab ablation NAME [--root DIR]             effects vs the baseline, paired by seed
    carvelab importance NAME [--root DIR] [--method auto|paired|fanova|ped_anova]   which axes matter
    carvelab export NAME --out DIR [--rank 0] [--top N] [--format carvelab|fla]
    carvelab suite NAME [--root DIR]                MAD-style scores over a sweep's suite or task.* axes
    carvelab suites [SUITE]                         the task suites a sweep can declare (suite: NAME)
    carvelab claims                                 the bundled claim studies and their claims
    carvelab claims run NAME [--size cpu|gpu] [key=value ...]   run one; ends with its verdicts
    carvelab claims verdict NAME [--size S] [--root DIR]        verdicts of a run study; refreshes MLflow
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata

logger = logging.getLogger("carvelab")


def version() -> str:
    try:
        return metadata.version("carvelab")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def format_table(rows: list[tuple[str, str]], header: tuple[str, str] = ("metric", "value")) -> str:
    width = max(len(header[0]), *(len(k) for k, _ in rows)) if rows else len(header[0])
    lines = [f"{header[0]:<{width}}  {header[1]}", f"{'-' * width}  {'-' * max(5, len(header[1]))}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # installed with optuna

    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial

    config = load_trial_config(args.config, args.overrides)
    with tqdm(total=config.train.steps, desc="train", unit="step", disable=args.quiet) as bar:
        result = run_trial(config, on_step=lambda step: bar.update(step - bar.n))
    rows = [("status", result.status), ("reason", result.reason or "-"), ("steps", str(result.steps)),
            ("backend", result.backend), ("precision", result.precision), ("step", result.step_mode)]
    rows += [(k, _fmt(v)) for k, v in sorted(result.metrics.items())]
    print(format_table(rows))
    return 0 if result.status != "failed" else 1


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # installed with optuna
    from tqdm.contrib.logging import logging_redirect_tqdm

    from carvelab.search_space.sweep_loading import load_sweep
    from carvelab.trials.sweep.driver import run_sweep

    spec = load_sweep(args.sweep, args.overrides, size=getattr(args, "size", None))
    total = spec.budget.trials
    last: dict = {}
    with tqdm(total=total, desc=spec.name, unit="trial", disable=args.quiet) as bar, logging_redirect_tqdm():
        def update(counts: dict) -> None:
            if counts == last:
                return
            last.clear()
            last.update(counts)
            done = counts["completed"] + counts["pruned"] + counts["failed"]
            bar.update(done - bar.n)
            bar.set_postfix(running=counts["running"], done=counts["completed"], pruned=counts["pruned"],
                            failed=counts["failed"], front=counts["front"],
                            **({"waiting": counts["pending"]} if counts.get("pending") else {}))

        summary = run_sweep(spec, args.root, address=args.address, on_update=update)
    rows = [("sweep", summary.name), ("directory", summary.sweep_dir), ("optuna storage", summary.storage),
            (f"tracking ({spec.tracking.backend})", str(summary.tracking_uri)),
            ("parent run", str(summary.parent_run_id))]
    rows += [(k, str(v)) for k, v in summary.counts.items() if k not in ("running", "pending")]
    rows.append(("wall seconds", f"{summary.wall_s:.1f}"))
    print(format_table(rows, ("sweep", "value")))
    if spec.claims or not args.quiet:  # a claim study always ends with its verdicts
        from carvelab.dashboards.frame import front_table, open_sweep

        data = open_sweep(spec.name, args.root)
        print()
        if spec.claims:
            print_claims(data, spec)
        else:
            print_front(data, front_table(data))
    if spec.tracking.backend == "mlflow":
        print(f"\nInspect in MLflow:  mlflow ui --host 127.0.0.1 --backend-store-uri {summary.tracking_uri}")
    return 0


def cmd_sweep_status(args: argparse.Namespace) -> int:
    from carvelab.trials.ops.status import sweep_table

    print(sweep_table(args.name, args.root))
    return 0


def cmd_sweep_check(args: argparse.Namespace) -> int:
    from carvelab.trials.ops.check import check_sweep

    report = check_sweep(args.name, args.root, repair=args.repair)
    print(report.text())
    return 0 if report.consistent else 1


def cmd_pareto(args: argparse.Namespace) -> int:
    from carvelab.dashboards.frame import front_table, open_sweep, trials_frame
    from carvelab.dashboards.report import publish

    data = open_sweep(args.name, args.root)
    df = trials_frame(data)
    table = front_table(data, df)
    print_front(data, table, args.rank)
    info = publish(data, df)
    print(f"front: {info['front']} points ({info['front_runs']} runs tagged on_front=true); "
          f"hypervolume {info['hypervolume']:.6g}; "
          "artifacts under pareto/ of the parent run")
    return 0


def print_front(data, table, rank: int = 0) -> None:
    """The front (ranks <= ``rank``) and the points tied with it, then what the sweep shows."""
    import polars as pl

    from carvelab.dashboards.uncertainty import significance_text

    shown = table
    if len(table):  # the front, and the points tied with it (dashboards.uncertainty)
        shown = table.filter((pl.col("pareto_rank") <= rank) | pl.col("tied_with_front"))
    replicated = "numbers" in shown.columns
    columns = ["pareto_rank", "tied_with_front"] + (["numbers", "n"] if replicated else ["number"])
    for m, _ in data.objectives:
        columns += [m] + ([f"{m}.lo", f"{m}.hi"] if replicated else [])
    columns += ["point"] + (["tune"] if data.spec.tune else [])
    with pl.Config(tbl_rows=200, tbl_cols=30, fmt_str_lengths=200, tbl_width_chars=300):
        print(shown.select(columns) if len(shown) else "no completed trials yet")
    if replicated:
        print("objective columns: seed means; .lo/.hi: their 95% interval (Student t over n seeds); "
              "tied_with_front: intervals overlap a front point's in every objective")
    tested = [f"{m} (selected on {t})" for m, t in data.on_test()]
    if tested:
        print("reported on the test split: " + ", ".join(tested))
    if data.spec.tune:
        print("tune: each point at the tune values with the best seed mean on validation "
              "(every combination: pareto/tune.md of the parent run)")
    print(significance_text(table, data.objectives, len(data.spec.seeds)))


def print_claims(data, spec) -> None:
    """The verdicts of ``spec``'s claims on ``data`` (claims as ``spec`` declares them),
    printed and published to the parent run."""
    from carvelab.dashboards.claims import claims_markdown, claims_table, publish_claims

    data.spec.claims = spec.claims
    rows = claims_table(data)
    print(claims_markdown(rows))
    publish_claims(data, rows)
    print("verdicts under claims/ of the parent run and in its claim.<i>.verdict tags")


def cmd_claims(args: argparse.Namespace) -> int:
    from carvelab.search_space.sweep_loading import bundled_sweeps, find_sweep_file, load_sweep
    from carvelab.search_space.yaml_io import read_yaml

    if args.claims_cmd is None:
        for name in bundled_sweeps():
            raw = read_yaml(find_sweep_file(name))
            if not raw.get("claims"):
                continue
            spec = load_sweep(name)
            sizes = ", ".join(["default (as written)"] + sorted(raw.get("sizes") or {}))
            print(f"{name}  [sizes: {sizes}]")
            for claim in spec.claims:
                print(f"  - {claim.name}" + (f"  ({claim.source})" if claim.source else ""))
        print("\nrun one:  carvelab claims run NAME [--size gpu]")
        return 0
    if args.claims_cmd == "run":
        return cmd_sweep_run(args)
    from carvelab.dashboards.frame import open_sweep

    spec = load_sweep(args.sweep, size=args.size)
    print_claims(open_sweep(spec.name, args.root), spec)
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    from carvelab.dashboards.ablation import ablation_markdown, ablation_table
    from carvelab.dashboards.frame import open_sweep

    print(ablation_markdown(ablation_table(open_sweep(args.name, args.root))))
    return 0


def cmd_importance(args: argparse.Namespace) -> int:
    from carvelab.dashboards.frame import open_sweep
    from carvelab.dashboards.importance import importance_markdown, importance_table, publish_importance

    data = open_sweep(args.name, args.root)
    table = importance_table(data, args.method)
    print(importance_markdown(table))
    publish_importance(data, table)
    print("artifacts under importance/ of the parent run")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from carvelab.dashboards.frame import open_sweep
    from carvelab.dashboards.suite import publish_suite, suite_markdown, suite_table

    data = open_sweep(args.name, args.root)
    metric, rows = suite_table(data)
    print(suite_markdown(metric, rows))
    publish_suite(data, metric, rows)
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from carvelab.trials.tasks.suites import SUITES, get_suite

    if args.suite is not None:
        try:
            suite = get_suite(args.suite)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        baselines = set(suite.selected("baseline"))
        print(f"{suite.name}: {suite.description}")
        for label in suite.selected("all"):
            print(f"  {label}" + ("  (baseline)" if label in baselines else ""))
        return 0
    for suite in SUITES.values():
        n_all, n_base = len(suite.selected("all")), len(suite.selected("baseline"))
        print(f"{suite.name}  [{n_all} settings, {n_base} baseline; tasks: {', '.join(suite.tasks())}]")
        print(f"  {suite.description}")
    print("\nin a sweep file:  suite: NAME   or   suite: {name: NAME, settings: baseline}"
          "\nits settings:     carvelab suites NAME")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from carvelab.dashboards.export import export
    from carvelab.dashboards.frame import open_sweep

    paths = export(open_sweep(args.name, args.root), args.out, rank=args.rank, top=args.top, fmt=args.format)
    for p in paths:
        print(p)
    if not paths:
        print("nothing to export: no completed trial at that rank")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvelab",
        description="Sweep, prune and compare gated delta-rule architectures.",
    )
    parser.add_argument("--version", action="version", version=f"carvelab {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="train and evaluate one trial config in this process")
    train.add_argument("config", help="trial config YAML (see trials/configs/)")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.steps=50")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser("sweep", help="run or inspect a sweep").add_subparsers(dest="sweep_cmd", metavar="ACTION")
    run = sweep.add_parser("run", help="run (or resume) a sweep: a YAML file or a bundled sweep name")
    run.add_argument("sweep", help="sweep YAML, or a bundled name (e.g. quickstart)")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. budget.trials=8")
    run.add_argument("--address", default=None, help="join this Ray cluster (default: a local Ray on 127.0.0.1)")
    run.add_argument("--root", default="carvelab_sweeps", help="folder holding sweep directories")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run.add_argument("--size", default=None, help="one of the file's sizes: (e.g. gpu); default: as written")
    run.set_defaults(func=cmd_sweep_run)
    status = sweep.add_parser("status", help="table of a sweep's trials")
    status.add_argument("name")
    status.add_argument("--root", default="carvelab_sweeps")
    status.set_defaults(func=cmd_sweep_status)
    check = sweep.add_parser("check", help="reconcile a sweep's Optuna trials with its MLflow runs "
                                           "(exit 1 while they disagree)")
    check.add_argument("name")
    check.add_argument("--root", default="carvelab_sweeps")
    check.add_argument("--repair", action="store_true",
                       help="fix the disagreements (never while a driver is running the sweep)")
    check.set_defaults(func=cmd_sweep_check)

    pareto = sub.add_parser("pareto", help="print a sweep's Pareto front and refresh it in MLflow")
    pareto.add_argument("name")
    pareto.add_argument("--root", default="carvelab_sweeps")
    pareto.add_argument("--rank", type=int, default=0, help="show ranks up to this one (default: the front)")
    pareto.set_defaults(func=cmd_pareto)
    ablation = sub.add_parser("ablation", help="print the ablation table of a sweep")
    ablation.add_argument("name")
    ablation.add_argument("--root", default="carvelab_sweeps")
    ablation.set_defaults(func=cmd_ablation)
    importance = sub.add_parser("importance", help="rank a sweep's axes by their effect on each objective")
    importance.add_argument("name")
    importance.add_argument("--root", default="carvelab_sweeps")
    importance.add_argument("--method", default="auto", choices=["auto", "paired", "fanova", "ped_anova"],
                            help="auto: paired effects for grid/ablation sweeps, fANOVA for search sweeps")
    importance.set_defaults(func=cmd_importance)
    suite = sub.add_parser("suite", help="MAD-style scores of a sweep over several tasks (per task, mean of tasks)")
    suite.add_argument("name")
    suite.add_argument("--root", default="carvelab_sweeps")
    suite.set_defaults(func=cmd_suite)
    suites = sub.add_parser("suites", help="list the task suites (or one suite's settings)")
    suites.add_argument("suite", nargs="?", default=None)
    suites.set_defaults(func=cmd_suites)
    exp = sub.add_parser("export", help="write the winning configs as re-runnable YAML files")
    exp.add_argument("name")
    exp.add_argument("--out", required=True, help="output folder (existing files are never overwritten)")
    exp.add_argument("--root", default="carvelab_sweeps")
    exp.add_argument("--rank", type=int, default=0, help="export points up to this Pareto rank")
    exp.add_argument("--top", type=int, default=None, help="at most this many points")
    exp.add_argument("--format", choices=["carvelab", "fla"], default="carvelab")
    exp.set_defaults(func=cmd_export)

    claims = sub.add_parser("claims", help="list, run and judge the bundled claim studies")
    claims.set_defaults(func=cmd_claims, claims_cmd=None)
    claim_cmds = claims.add_subparsers(dest="claims_cmd", metavar="ACTION")
    crun = claim_cmds.add_parser("run", help="run (or resume) a claim study; ends with its verdicts")
    crun.add_argument("sweep", help="a claim study: bundled name or YAML file")
    crun.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    crun.add_argument("--size", default=None, help="one of the study's sizes (e.g. gpu); default: the file as written")
    crun.add_argument("--address", default=None, help="join this Ray cluster (default: a local Ray on 127.0.0.1)")
    crun.add_argument("--root", default="carvelab_sweeps")
    crun.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    crun.set_defaults(func=cmd_claims)
    cver = claim_cmds.add_parser("verdict", help="the verdicts of a claim study that has run")
    cver.add_argument("sweep", help="the study: bundled name or YAML file (its claims as written now)")
    cver.add_argument("--size", default=None)
    cver.add_argument("--root", default="carvelab_sweeps")
    cver.set_defaults(func=cmd_claims)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train cfg.yaml -q train.steps=5`).
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if "=" not in e or e.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    from carvelab.search_space.yaml_io import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"carvelab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
