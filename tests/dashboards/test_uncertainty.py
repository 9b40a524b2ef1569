"""Seed intervals and ties with the front (dashboards/uncertainty.py), on values worked by hand."""
import math
from types import SimpleNamespace

import polars as pl
import pytest

from carvelab.dashboards.report import summary_markdown
from carvelab.dashboards.uncertainty import interval_text, mean_interval, tied_with_front, with_intervals

OBJ = [("acc", "maximize"), ("params", "minimize")]


def test_interval_of_four_seeds_by_hand():
    iv = mean_interval([1.0, 2.0, 3.0, 4.0])
    s = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)  # sample std, 1.29099...
    assert iv["n"] == 4 and iv["mean"] == 2.5
    assert iv["se"] == pytest.approx(s / 2)
    assert iv["hi"] - 2.5 == pytest.approx(3.182 * s / 2, rel=1e-4)  # t_0.975 with 3 df
    assert iv["lo"] == pytest.approx(2.5 - 3.182 * s / 2, rel=1e-4)


def test_one_seed_has_no_interval():
    iv = mean_interval([0.3])
    assert iv["mean"] == 0.3 and all(math.isnan(iv[k]) for k in ("se", "lo", "hi"))
    assert interval_text({"acc": 0.3, "acc.lo": iv["lo"], "acc.hi": iv["hi"]}, "acc") == "0.3"


def _row(rank, acc_lo, acc_hi, p_lo, p_hi):
    return {"pareto_rank": rank, "acc.lo": acc_lo, "acc.hi": acc_hi, "params.lo": p_lo, "params.hi": p_hi}


def test_tied_only_when_intervals_overlap_a_front_point_in_every_objective():
    table = pl.DataFrame([
        _row(0, 0.40, 0.60, 10, 10),              # front
        _row(1, 0.45, 0.55, 10, 10),              # overlaps in both: tied
        _row(1, 0.45, 0.55, 11, 11),              # overlaps in acc only (params exactly larger): not tied
        _row(2, 0.10, 0.20, 9, 12),               # overlaps in params only: not tied
        _row(1, math.nan, math.nan, 10, 10),      # one seed, no interval: never tied
    ])
    assert tied_with_front(table, OBJ) == [False, True, False, False, False]


def test_with_intervals_uses_each_points_own_runs():
    points = pl.DataFrame({"point": ["a", "b"], "acc": [2.5, 7.0], "params": [5.0, 5.0]})
    runs = pl.DataFrame({"point": ["a"] * 4 + ["b"], "acc": [1.0, 2.0, 3.0, 4.0, 7.0], "params": [5.0] * 5})
    out = with_intervals(points, runs, OBJ).to_dicts()
    assert out[0]["acc.lo"] == pytest.approx(mean_interval([1, 2, 3, 4])["lo"])
    assert out[0]["params.lo"] == out[0]["params.hi"] == 5.0
    assert math.isnan(out[1]["acc.lo"])


def _summary(seeds, table):
    data = SimpleNamespace(name="s", spec=SimpleNamespace(mode="grid", seeds=seeds, tune=[]), objectives=OBJ,
                           told_objectives=OBJ, on_test=lambda: [])
    return summary_markdown(data, pl.DataFrame({"state": ["COMPLETE"]}), table, pl.DataFrame())


def test_summary_says_plainly_when_there_is_no_uncertainty_estimate():
    table = pl.DataFrame({"number": [0], "point": ["a"], "acc": [0.3], "params": [5.0], "pareto_rank": [0],
                          "tied_with_front": [False]})
    text = _summary([0], table)
    assert "One seed per point: there is no uncertainty estimate" in text


def test_summary_shows_intervals_and_lists_ties():
    table = pl.DataFrame([
        dict(numbers=[0, 1], n=2, point="a", acc=0.5, params=5.0, pareto_rank=0, tied_with_front=False,
             **{"acc.lo": 0.4, "acc.hi": 0.6, "params.lo": 5.0, "params.hi": 5.0}),
        dict(numbers=[2, 3], n=2, point="b", acc=0.45, params=5.0, pareto_rank=1, tied_with_front=True,
             **{"acc.lo": 0.35, "acc.hi": 0.55, "params.lo": 5.0, "params.hi": 5.0}),
    ])
    text = _summary([0, 1], table)
    assert "0.5 ± 0.1" in text and "[2, 3] (tied) | 2 | 0.45 ± 0.1" in text
    assert "1 point(s) off it are not distinguishable from the front" in text


def test_significance_counts_front_separated_tied_and_unjudged_points():
    from carvelab.dashboards.uncertainty import significance_text

    table = pl.DataFrame([
        {**_row(0, 0.8, 0.9, 10, 11), "tied_with_front": False},
        {**_row(1, 0.5, 0.6, 10, 11), "tied_with_front": False},      # worse beyond the intervals
        {**_row(1, 0.7, 0.85, 10, 12), "tied_with_front": True},      # overlaps the front point everywhere
        {**_row(2, math.nan, math.nan, 10, 10), "tied_with_front": False},  # one seed: no interval
    ])
    text = significance_text(table, OBJ, seeds=2)
    assert text.startswith("1 of 4 points are on the front")
    assert "1 point(s) off it are worse" in text and "1 point(s) off it are not distinguishable" in text
    assert "1 point(s) have fewer than 2 completed seeds" in text
    assert "no difference between points is established" in significance_text(table, OBJ, seeds=1)
