"""Paired statistics of the ablation table."""
import math
import statistics

import pytest

from carvelab.dashboards.ablation import paired_stats, t975


def test_t_quantiles():
    assert t975(1) == pytest.approx(12.706)
    assert t975(10) == pytest.approx(2.228)
    assert t975(120) == pytest.approx(1.980, abs=2e-3)
    assert t975(10_000) == pytest.approx(1.96, abs=1e-3)


def test_paired_stats_by_hand():
    diffs = [0.1, 0.3, 0.2, 0.4]
    s = paired_stats(diffs)
    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    se = sd / 2
    assert s["n"] == 4 and s["mean"] == pytest.approx(m) and s["std"] == pytest.approx(sd)
    assert s["ci_low"] == pytest.approx(m - 3.182 * se) and s["ci_high"] == pytest.approx(m + 3.182 * se)
    assert s["sigma"] == pytest.approx(m / se)


def test_single_pair_has_no_interval():
    s = paired_stats([0.5])
    assert s["n"] == 1 and s["mean"] == 0.5 and math.isnan(s["ci_low"]) and math.isnan(s["sigma"])
