"""bench_isolation runs end to end on the CPU and reports both figures' spread."""
import pytest

from carvelab.trials import bench_isolation


def test_spread_by_hand():
    s = bench_isolation.spread([90.0, 100.0, 110.0])
    assert s["median"] == 100.0 and s["max_dev"] == pytest.approx(0.1)
    assert s["cv"] == pytest.approx((200 / 3) ** 0.5 / 100)


def test_two_runs_report_isolated_and_contended_figures():
    report = bench_isolation.run("cpu", runs=2, workers=2, steps=30)
    assert report["completed"] == 2 and len(report["isolated"]) == 2 and len(report["contended"]) == 2
    assert all(v > 0 for v in report["isolated"] + report["contended"])
    assert report["isolated_spread"]["median"] > 0
