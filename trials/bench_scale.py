"""The sweep's orchestration at scale: thousands of the smallest real trials.

    python -m carvelab.trials.bench_sweep scale [--trials 2000] [--root DIR] [storage=URL ...]

Each trial trains a one-layer d 16 model for one step on MQAR and evaluates it (real Ray
tasks, real Optuna storage, real MLflow runs, real result files), so the sweep's time is
mostly the driver's own. The benchmark prints:

- driver overhead per trial: the driver's loop time not spent waiting for trials to finish
  (asking, planning, submitting, telling Optuna, MLflow writes, result files), per tenth of
  the trials in order, with its parts (Optuna ask/tell, tracker writes); a per-trial figure
  that grows along the sweep is a cost that grows with the trial count;
- ``carvelab pareto NAME`` and ``carvelab sweep status NAME`` wall times at the end;
- the HTML front's size, and the time headless Chromium takes to load it, against an empty
  page loaded in the same run.

Storage: the sweep folder's SQLite by default; ``storage=postgresql://...`` (and
``tracking.uri=``) as overrides for a server.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

from carvelab.search_space.sweep_loading import load_sweep

SCALE_BASE = {
    "preset": "gdn2",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "chunk_size": 16, "backend": "torch"},
    "task": {"name": "mqar", "seq_len": 32, "num_kv_pairs": 4, "vocab_size": 32, "train_examples": 64,
             "val_examples": 16, "test_examples": 16},
    "train": {"steps": 1, "batch_size": 4, "eval_every": 1, "warmup_steps": 0, "compile_steps": 0,
              "timing_steps": 0, "device": "cpu"},
}


def scale_sweep(name: str, trials: int, concurrency: int = 2) -> dict:
    """``trials`` distinct points: a uniform learning rate, two write gates."""
    return {
        "name": name, "base": SCALE_BASE, "mode": "search",
        "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}, "write_gate": ["scalar", "per_value"]},
        "objectives": [{"metric": "val_accuracy", "direction": "maximize"},
                       {"metric": "params", "direction": "minimize"}],
        "sampler": {"name": "random", "seed": 0}, "budget": {"trials": trials},
        "resources": {"cpus_per_trial": 1, "concurrency": concurrency},
    }


class Clock:
    """Seconds spent inside chosen methods, per part, while ``instrument`` is on."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.marks: list[tuple[float, float, dict]] = []  # (time, waited so far, parts so far) per recorded trial

    def wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - t0
        return timed


@contextlib.contextmanager
def instrument(clock: Clock) -> Iterator[Clock]:
    """Time the driver's waits, Optuna's ask/tell and the tracker's writes (class attributes,
    restored on exit); mark each trial the driver records."""
    import optuna

    from carvelab.trials.sweep import driver, scheduler
    from carvelab.trials import tracking

    patches = [(scheduler.RayExecutor, "wait", "waiting for trials"),
               (optuna.study.Study, "ask", "optuna ask"), (optuna.study.Study, "tell", "optuna tell")]
    patches += [(tracking.MlflowTracker, m, "tracker writes") for m in
                ("start_child", "log_metrics", "set_tags", "finish")]
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in patches]
    record = driver.SweepDriver._record

    def marked(self, number, payload, *args):
        record(self, number, payload, *args)
        clock.marks.append((time.perf_counter(), clock.parts.get("waiting for trials", 0.0), dict(clock.parts)))

    try:
        for cls, name, part in patches:
            setattr(cls, name, clock.wrap(part, cls.__dict__[name]))
        driver.SweepDriver._record = marked
        yield clock
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
        driver.SweepDriver._record = record


def per_trial_windows(clock: Clock, start: float, windows: int = 10) -> list[dict]:
    """Driver time not spent waiting, per trial, in ``windows`` consecutive slices of the trials
    after the first."""
    # from the first recorded trial on: set-up (Ray, the study, the parent run) is not per trial
    prev, marks = (clock.marks[0] if clock.marks else (start, 0.0, {})), clock.marks[1:]
    out = []
    size = max(1, -(-len(marks) // windows))
    for i in range(0, len(marks), size):
        chunk = marks[i:i + size]
        end = chunk[-1]
        n = len(chunk)
        busy = (end[0] - prev[0]) - (end[1] - prev[1])
        parts = {k: 1000 * (end[2].get(k, 0.0) - prev[2].get(k, 0.0)) / n for k in end[2] if k != "waiting for trials"}
        out.append({"trials": f"{i + 2}-{i + n + 1}", "n": n, "overhead_ms": 1000 * busy / n, "parts_ms": parts})
        prev = end
    return out


def chromium_load_s(path: Path, empty: Path, repeats: int = 3) -> tuple[float, float]:
    """Median seconds headless Chromium takes to load ``path`` and an empty page (``load`` event)."""
    import shutil

    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    times: dict[Path, list[float]] = {path: [], empty: []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(repeats):
                for page_path in (empty, path):
                    page = browser.new_page()
                    t0 = time.perf_counter()
                    page.goto(page_path.resolve().as_uri(), wait_until="load")
                    times[page_path].append(time.perf_counter() - t0)
                    page.close()
        finally:
            browser.close()
    return statistics.median(times[path]), statistics.median(times[empty])


def scale(trials: int, root: Path, overrides: list[str] = (), concurrency: int = 2, browser: bool = True) -> dict:
    """Run the scale sweep and measure it (see the module docstring)."""
    from carvelab.trials.cli import main as cli
    from carvelab.trials.sweep.driver import run_sweep

    spec = load_sweep(scale_sweep(f"scale-{trials}", trials, concurrency), list(overrides))
    clock = Clock()
    t0 = time.perf_counter()
    with instrument(clock):
        summary = run_sweep(spec, root)
    loop_s = time.perf_counter() - t0
    windows = per_trial_windows(clock, t0)
    timings = {}
    for label, argv in (("pareto", ["pareto", spec.name, "--root", str(root)]),
                        ("sweep status", ["sweep", "status", spec.name, "--root", str(root)])):
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli(argv)
        timings[label] = {"seconds": time.perf_counter() - t, "exit": code}
    html = sorted(Path(summary.sweep_dir).rglob("pareto.html"), key=lambda p: p.stat().st_mtime)
    result = {"trials": trials, "name": spec.name, "sweep_dir": summary.sweep_dir, "tracking_uri": summary.tracking_uri,
              "storage": summary.storage.split("@")[-1], "counts": summary.counts,
              "loop_s": loop_s, "windows": windows, "commands": timings,
              "overhead_ms_median": statistics.median(w["overhead_ms"] for w in windows) if windows else None}
    if html:
        result["html_bytes"] = html[-1].stat().st_size
        if browser:
            empty = root / "empty.html"
            empty.write_text("<!doctype html><html><body></body></html>")
            result["chromium_load_s"], result["chromium_empty_s"] = chromium_load_s(html[-1], empty)
    return result


def print_scale(r: dict) -> None:
    print(f"{r['trials']} trials on {r['storage']}: {r['counts']} in {r['loop_s']:.0f} s")
    print("driver overhead per trial (ms), by tenth of the trials:")
    for w in r["windows"]:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(w["parts_ms"].items()))
        print(f"  trials {w['trials']:>11s}: {w['overhead_ms']:7.1f}   ({parts})")
    first, last = r["windows"][0]["overhead_ms"], r["windows"][-1]["overhead_ms"]
    print(f"  last tenth / first tenth: {last / first:.2f}x; median {r['overhead_ms_median']:.1f} ms (target <= 50 ms)")
    for label, t in r["commands"].items():
        print(f"carvelab {label}: {t['seconds']:.2f} s (exit {t['exit']})" + ("  (target <= 10 s)" if label == "pareto" else ""))
    if "html_bytes" in r:
        line = f"pareto.html: {r['html_bytes'] / 1e6:.2f} MB"
        if "chromium_load_s" in r:
            line += (f"; headless Chromium loads it in {r['chromium_load_s']:.2f} s (an empty page: "
                     f"{r['chromium_empty_s']:.2f} s; target <= 5 s)")
        print(line)
