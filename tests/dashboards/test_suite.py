"""MAD-style suite aggregation: best per setting, mean per task, mean of tasks, intervals over seeds."""
import json

import polars as pl
import pytest

from carvelab.dashboards.suite import OVERALL, suite_markdown, suite_rows
from carvelab.search_space.sweep_loading import load_sweep

SPEC = load_sweep({
    "name": "s", "mode": "grid", "seeds": [0, 1, 2],
    "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2},
             "task": {"name": "mqar", "seq_len": 32, "num_kv_pairs": 4, "vocab_size": 32}},
    "space": {"task.name": ["mqar", "parity"], "erase_axis": ["key", "value"]},
})


def frame(values):
    """values: (task, extra task keys, arch, seed) -> test accuracy."""
    rows = []
    for i, ((task, extra, arch, seed), v) in enumerate(values.items()):
        point = {"task.name": task, **dict(extra), "erase_axis": arch}
        rows.append({"number": i, "state": "COMPLETE", "seed": seed, "label": "", "point": json.dumps(point, sort_keys=True),
                     "tune": "{}", "test_accuracy": v})
    return pl.DataFrame(rows)


def test_task_scores_average_settings_and_the_overall_averages_tasks():
    values = {}
    for seed in (0, 1, 2):
        values[("mqar", (("task.num_kv_pairs", 4),), "key", seed)] = 0.9 + 0.01 * seed
        values[("mqar", (("task.num_kv_pairs", 8),), "key", seed)] = 0.5 + 0.01 * seed
        values[("parity", (), "key", seed)] = 0.6
        values[("mqar", (("task.num_kv_pairs", 4),), "value", seed)] = 0.8
        values[("mqar", (("task.num_kv_pairs", 8),), "value", seed)] = 0.4
        values[("parity", (), "value", seed)] = 0.5
    rows = {(json.loads(r["architecture"])["erase_axis"], r["task"]): r for r in suite_rows(SPEC, frame(values), "test_accuracy")}
    assert rows[("key", "mqar")]["mean"] == pytest.approx(0.71) and rows[("key", "mqar")]["settings"] == 2
    assert rows[("key", "mqar")]["n"] == 3 and rows[("key", "mqar")]["lo"] < 0.71 < rows[("key", "mqar")]["hi"]
    assert rows[("key", OVERALL)]["mean"] == pytest.approx((0.71 + 0.6) / 2)
    assert rows[("value", OVERALL)]["mean"] == pytest.approx((0.6 + 0.5) / 2)
    text = suite_markdown("test_accuracy", list(rows.values()))
    assert text.index('"key"') < text.index('"value"')             # ranked by the overall score
    assert "mqar" in text and "parity" in text and "(n 3)" in text
    key, value = (next(r["architecture"] for r in rows.values() if json.loads(r["architecture"])["erase_axis"] == a)
                  for a in ("key", "value"))
    assert f"- parity: disjoint 95% intervals: {key} above {value}." in text
    assert "No two architectures" not in text


def test_tasks_where_every_interval_overlaps_are_named():
    from carvelab.dashboards.suite import separated_pairs

    values = {}
    for seed, jitter in zip((0, 1, 2), (-0.05, 0.0, 0.05)):
        values[("mqar", (), "key", seed)] = 0.95 + jitter           # overlapping: [0.83, 1.07] both
        values[("mqar", (), "value", seed)] = 0.94 + jitter
        values[("parity", (), "key", seed)] = 0.9 + jitter / 10     # apart: key far above value
        values[("parity", (), "value", seed)] = 0.5 + jitter / 10
    rows = suite_rows(SPEC, frame(values), "test_accuracy")
    apart = separated_pairs(rows)
    assert apart["mqar"] == [] and len(apart["parity"]) == 1
    assert json.loads(apart["parity"][0][0])["erase_axis"] == "key"
    text = suite_markdown("test_accuracy", rows)
    assert "- No two architectures have disjoint 95% intervals on: mqar." in text
    alone = [r for r in rows if json.loads(r["architecture"])["erase_axis"] == "key"]
    assert separated_pairs(alone) == {} and "disjoint" not in suite_markdown("test_accuracy", alone)


def test_a_seed_missing_a_setting_is_left_out_of_that_task_and_of_the_overall():
    values = {("mqar", (("task.num_kv_pairs", n),), "key", s): 0.5 for n in (4, 8) for s in (0, 1, 2)}
    values.update({("parity", (), "key", s): 0.7 for s in (0, 1, 2)})
    del values[("mqar", (("task.num_kv_pairs", 8),), "key", 2)]
    rows = {r["task"]: r for r in suite_rows(SPEC, frame(values), "test_accuracy")}
    assert rows["mqar"]["n"] == 2 and rows["parity"]["n"] == 3 and rows[OVERALL]["n"] == 2


def test_one_task_is_not_a_suite():
    values = {("mqar", (), "key", s): 0.5 for s in (0, 1)}
    assert "needs two or more task settings" in suite_markdown("test_accuracy", suite_rows(SPEC, frame(values), "test_accuracy"))


SUITE_SPEC = load_sweep({
    "name": "s", "mode": "grid", "seeds": [0, 1, 2], "suite": "state_tracking",
    "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}},
    "space": {"erase_axis": ["key", "value"]},
})


def suite_frame(values):
    """values: (suite label, arch, seed) -> test accuracy."""
    rows = [{"number": i, "state": "COMPLETE", "seed": seed, "label": "", "tune": "{}", "test_accuracy": v,
             "point": json.dumps({"suite": label, "erase_axis": arch}, sort_keys=True)}
            for i, ((label, arch, seed), v) in enumerate(values.items())]
    return pl.DataFrame(rows)


def test_a_suite_groups_its_settings_by_task_and_needs_every_setting_the_suite_lists():
    labels = {"parity": 0.9, "modular_arithmetic": 0.6, "modular_arithmetic:brackets=true": 0.4, "s5": 0.2}
    values = {(label, arch, seed): v - (0.1 if arch == "value" else 0.0)
              for label, v in labels.items() for arch in ("key", "value") for seed in (0, 1, 2)}
    out = suite_rows(SUITE_SPEC, suite_frame(values), "test_accuracy")
    assert {r["architecture"] for r in out} == {'{"erase_axis": "key"}', '{"erase_axis": "value"}'}  # suite is no axis
    rows = {(json.loads(r["architecture"])["erase_axis"], r["task"]): r for r in out}
    assert rows[("key", "modular_arithmetic")]["settings"] == 2
    assert rows[("key", "modular_arithmetic")]["mean"] == pytest.approx(0.5)
    assert rows[("key", OVERALL)]["mean"] == pytest.approx((0.9 + 0.5 + 0.2) / 3) and rows[("key", OVERALL)]["n"] == 3
    # no run at all of one setting: no seed has the task complete (the suite, not the runs, lists the settings)
    del values[("modular_arithmetic:brackets=true", "key", 0)], values[("modular_arithmetic:brackets=true", "key", 1)]
    del values[("modular_arithmetic:brackets=true", "key", 2)]
    rows = {(json.loads(r["architecture"])["erase_axis"], r["task"]): r
            for r in suite_rows(SUITE_SPEC, suite_frame(values), "test_accuracy")}
    assert rows[("key", "modular_arithmetic")]["n"] == 0 and rows[("key", OVERALL)]["n"] == 0
    assert rows[("value", OVERALL)]["n"] == 3


def test_one_task_at_several_settings_is_a_suite():
    spec = load_sweep({"name": "z", "mode": "grid", "seeds": [0, 1], "suite": "zoology_mqar",
                       "base": {"preset": "gdn2", "model": {"d_model": 16, "n_heads": 2}}, "space": {"erase_axis": ["key"]}})
    values = {(label, "key", seed): 0.5 for label in spec.suite_settings for seed in (0, 1)}
    text = suite_markdown("test_accuracy", suite_rows(spec, suite_frame(values), "test_accuracy"))
    assert "| architecture | mqar | (mean of tasks) |" in text and "0.500 [0.500, 0.500] (n 2)" in text
