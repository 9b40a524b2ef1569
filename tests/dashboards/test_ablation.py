"""Paired statistics of the ablation table."""
import math
import statistics

import pytest

from carvelab.dashboards.ablation import paired_stats, t975


def student_t_cdf(x: float, df: int, intervals: int = 2000) -> float:
    """P(T <= x) for x >= 0, by Simpson's rule over the Student-t density (independent of the table)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / intervals
    total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
    return 0.5 + total * h / 3


def student_t_quantile(p: float, df: int) -> float:
    low, high = 0.0, 20.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("df", list(range(1, 32)) + [40, 60, 120, 1000])
def test_t_quantiles_match_the_t_distribution(df):
    # the table is rounded to 3 decimals; beyond it, an expansion
    assert t975(df) == pytest.approx(student_t_quantile(0.975, df), abs=5e-4 if df <= 30 else 2e-5)


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


def test_many_effects_get_a_multiple_comparison_note():
    import polars as pl

    from carvelab.dashboards.ablation import ablation_markdown

    rows = [{"change": f"c{i}", "objective": "acc", "direction": "maximize", "baseline": 0.5, "n": 3, "mean": m,
             "std": 0.01, "ci_low": m - 0.02, "ci_high": m + 0.02, "sigma": 5.0, "relative": m}
            for i, m in enumerate([0.1, 0.0, -0.1, 0.01])]
    text = ablation_markdown(pl.DataFrame(rows))
    assert "4 effects tested" in text and "2 interval(s) exclude 0" in text and "about 0.2" in text
    assert "98.75%" in text  # Bonferroni: 1 - 0.05 / 4
    assert "effects tested" not in ablation_markdown(pl.DataFrame(rows[:1]))
