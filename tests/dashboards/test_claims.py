"""Claim verdicts on planted effects, claim and size validation."""
import numpy as np
import pytest

from carvelab.dashboards.claims import claims_markdown, verdict
from carvelab.search_space.claims import apply_size
from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.sweep_spec import ClaimSpec
from carvelab.search_space.yaml_io import ConfigError


def claim(expect="increase", relative=None, tolerance=None):
    return ClaimSpec(name="c", change={"eigen_range": "[-1,1]"}, metric="test_accuracy", expect=expect,
                     relative=relative, tolerance=tolerance)


def draws(effect, sd, n=5, seed=0):
    return list(effect + sd * np.random.default_rng(seed).standard_normal(n))


@pytest.mark.parametrize("expect, effect, want", [
    ("increase", +0.3, "supported"),
    ("increase", -0.3, "contradicted"),
    ("increase", 0.0, "inconclusive"),
    ("decrease", -0.3, "supported"),
    ("decrease", +0.3, "contradicted"),
    ("decrease", 0.0, "inconclusive"),
])
def test_planted_effects_give_their_verdicts(expect, effect, want):
    diffs = draws(effect, 0.05)
    got, stats, why = verdict(claim(expect), diffs, [])
    assert got == want, (diffs, stats, why)
    assert stats["n"] == 5 and stats["ci_low"] < stats["mean"] < stats["ci_high"]


def test_nulls_are_inconclusive_at_about_the_nominal_rate():
    """Under no effect a one-sided verdict is reached in about 2.5% of studies (each side)."""
    decided = sum(verdict(claim(), draws(0.0, 1.0, n=4, seed=s), [])[0] != "inconclusive" for s in range(2000))
    assert 40 <= decided <= 160, decided     # 5% of 2000 = 100 (binomial sd 10)


def test_relative_claims_are_judged_on_the_claimed_band():
    c = claim("relative", relative=-0.19, tolerance=0.03)
    assert verdict(c, [], [-0.19, -0.19, -0.19])[0] == "supported"            # deterministic, on the claim
    assert verdict(c, [], draws(-0.19, 0.005))[0] == "supported"
    assert verdict(c, [], [-0.08, -0.08, -0.08])[0] == "contradicted"        # a real but smaller effect
    assert verdict(c, [], draws(-0.22, 0.05))[0] == "inconclusive"           # too noisy to tell
    null = claim("relative", relative=0.0, tolerance=0.01)                   # "no cost": equivalence
    assert verdict(null, [], draws(0.0, 0.001))[0] == "supported"
    assert verdict(null, [], draws(0.05, 0.001))[0] == "contradicted"


def test_one_seed_gives_no_interval_and_says_so():
    got, stats, why = verdict(claim(), [0.5], [])
    assert got == "inconclusive" and "needs 2 or more seeds" in why


def test_markdown_shows_every_claim_with_its_verdict_and_the_multiplicity_note():
    rows = []
    for i, (v, mean) in enumerate((("supported", 0.4), ("inconclusive", 0.01))):
        rows.append({"index": i, "name": f"claim {i}", "source": "paper", "change": "x=1", "against": "baseline",
                     "metric": "test_accuracy", "expect": "increase", "scale": "absolute", "against_mean": 0.5,
                     "n": 3, "mean": mean, "std": 0.01, "ci_low": mean - 0.02, "ci_high": mean + 0.02,
                     "verdict": v, "why": "because"})
    text = claims_markdown(rows)
    assert "**supported**" in text and "**inconclusive**" in text and "Source: paper" in text
    assert "1 supported, 0 contradicted, 1 inconclusive" in text and "among 2 claims" in text


def _study(**extra):
    data = {
        "name": "c", "mode": "ablation", "seeds": [0, 1],
        "base": {"preset": "deltanet", "model": {"d_model": 16, "n_heads": 2},
                 "task": {"name": "parity", "train_examples": 100, "val_examples": 16, "test_examples": 16},
                 "train": {"steps": 5, "timing_steps": 0}},
        "ablation": {"changes": [{"eigen_range": "[-1,1]"}, {"model.decay": "scalar"}]},
        "claims": [{"change": {"eigen_range": "[-1,1]"}, "metric": "test_accuracy", "expect": "increase"}],
    }
    data.update(extra)
    return data


def test_claims_load_with_defaults_and_match_changes_by_path():
    spec = load_sweep(_study(claims=[
        {"change": {"model.eigen_range": "[-1,1]"}, "metric": "test_accuracy", "expect": "increase"},
        {"change": {"model.decay": "scalar"}, "against": {"eigen_range": "[-1,1]"}, "metric": "params",
         "expect": {"relative": 0.0, "tolerance": 0.01}, "source": "s"},
    ]))
    first, second = spec.claims
    assert first.change == {"eigen_range": "[-1,1]"} and first.against is None
    assert first.name == "eigen_range=[-1,1] vs baseline: test_accuracy increase"
    assert second.against == {"eigen_range": "[-1,1]"} and second.expect == "relative" and second.tolerance == 0.01


@pytest.mark.parametrize("claims, extra, match", [
    ([{"change": {"eigen_range": "[-1,1]"}, "metric": "val_accuracy", "expect": "increase"}], {},
     r"claims\[0\].metric='val_accuracy': a claim is reported, not selected on; use the test split's 'test_accuracy'"),
    ([{"change": {"covariance": "propagate"}, "metric": "test_accuracy", "expect": "increase"}], {},
     r"claims\[0\].change=\{'covariance': 'propagate'\} is not one of ablation.changes"),
    ([{"change": {"eigen_range": "[-1,1]"}, "metric": "test_accuracy", "expect": "better"}], {},
     r"claims\[0\].expect='better' is not allowed"),
    ([{"change": {"eigen_range": "[-1,1]"}, "metric": "test_accuracy", "expect": {"relative": 0.1, "tolerance": 0}}],
     {}, r"claims\[0\].expect.tolerance=0 must be > 0"),
    ([{"change": {"eigen_range": "[-1,1]"}, "metric": "test_accuracy", "expect": "increase", "paper": "x"}], {},
     r"claims\[0\].paper is not a claim key"),
    ([{"change": {"eigen_range": "[-1,1]"}, "expect": "increase"}], {}, r"claims\[0\].metric is required"),
    ([{"change": {"eigen_range": "[-1,1]"}, "metric": "test_accuracy", "expect": "increase"}],
     {"mode": "grid", "ablation": {}, "space": {"eigen_range": ["[0,1]", "[-1,1]"]}}, r"claims need mode 'ablation'"),
    ([{"change": {"eigen_range": "[-1,1]"}, "metric": "init_val_loss", "expect": {"relative": 0, "tolerance": 1e-12}}],
     {}, r"claims\[0\].metric='init_val_loss' is measured only with base.train.eval_at_init: true"),
], ids=["val-metric", "unknown-change", "bad-expect", "zero-tolerance", "unknown-key", "no-metric", "not-ablation",
        "init-metric-not-measured"])
def test_bad_claims_name_the_key(claims, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep(_study(claims=claims, **extra))


def test_sizes_apply_before_overrides_and_rename_the_sweep():
    data = _study(sizes={"big": {"base.train.steps": 50, "seeds": [0, 1, 2]}})
    big = load_sweep(data, ["base.train.lr=0.01"], size="big")
    assert big.name == "c_big" and big.seeds == [0, 1, 2]
    assert big.base["train"]["steps"] == 50 and big.base["train"]["lr"] == 0.01
    assert load_sweep(data).name == "c" and load_sweep(data).base["train"]["steps"] == 5
    with pytest.raises(ConfigError, match=r"size 'huge' is not declared; sizes here: \['big'\]"):
        load_sweep(data, size="huge")
    with pytest.raises(ConfigError, match="sizes must map a size name to dotted overrides"):
        apply_size({"sizes": {"gpu": 3}}, None, "f")


def test_bundled_claim_studies_load_at_every_size():
    from carvelab.search_space.sweep_loading import bundled_sweeps
    from carvelab.search_space.yaml_io import read_yaml
    from carvelab.search_space.sweep_loading import find_sweep_file

    studies = [n for n in bundled_sweeps() if read_yaml(find_sweep_file(n)).get("claims")]
    assert "claim_negative_eigenvalues" in studies
    for name in studies:
        assert load_sweep(name).claims
        for size in read_yaml(find_sweep_file(name)).get("sizes") or {}:
            spec = load_sweep(name, size=size)
            assert spec.claims and spec.name == f"{name}_{size}"


def test_memory_claims_need_per_trial_peaks():
    """On a CPU peak_mem_mb is the worker process's high-water mark: a memory claim there is
    inconclusive, saying why, however decisive the numbers look."""
    import json

    import polars as pl

    from carvelab.dashboards.claims import claim_rows

    spec = load_sweep(_study(claims=[{"change": {"model.decay": "scalar"}, "metric": "peak_mem_mb",
                                      "expect": {"relative": -0.13, "tolerance": 0.03}}]))

    def frame(per_trial):
        rows = []
        for label, point, mem in (("baseline", {}, 100.0), ("model.decay=scalar", {"model.decay": "scalar"}, 87.0)):
            for seed in (0, 1):
                rows.append({"number": len(rows), "state": "COMPLETE", "seed": seed, "label": label,
                             "point": json.dumps(point), "tune": "{}", "val_accuracy": 0.5,
                             "m.peak_mem_mb": mem, "m.peak_mem_per_trial": per_trial})
        return pl.DataFrame(rows)

    assert claim_rows(spec, frame(1.0))[0]["verdict"] == "supported"
    cpu = claim_rows(spec, frame(0.0))[0]
    assert cpu["verdict"] == "inconclusive" and "not measured per trial" in cpu["why"]


def _accuracy_frame(change_by_seed, against_by_seed):
    import json

    import polars as pl

    rows = []
    for label, point, values in (("baseline", {}, against_by_seed),
                                 ("eigen_range=[-1,1]", {"eigen_range": "[-1,1]"}, change_by_seed)):
        for seed, value in reversed(list(enumerate(values))):          # rows out of seed order
            rows.append({"number": len(rows), "state": "COMPLETE", "seed": seed, "label": label,
                         "point": json.dumps(point), "tune": "{}", "val_accuracy": value,
                         "m.test_accuracy": value})
    return pl.DataFrame(rows)


def test_rows_keep_the_paired_values_seed_by_seed_and_say_when_seeds_spread_more_than_the_effect():
    from carvelab.dashboards.claims import claim_rows

    spec = load_sweep(_study(seeds=[0, 1, 2]))
    split = claim_rows(spec, _accuracy_frame([0.99, 0.99, 0.13], [0.85, 0.94, 0.89]))[0]
    assert split["verdict"] == "inconclusive"
    assert split["seeds"] == [0, 1, 2] and split["change_by_seed"] == [0.99, 0.99, 0.13]
    assert split["against_by_seed"] == [0.85, 0.94, 0.89]
    assert "the seeds of an arm spread over 0.86, more than the effect (0.19)" in split["why"]
    text = claims_markdown([split])
    assert "Per seed (0, 1, 2): change 0.99, 0.99, 0.13; against 0.85, 0.94, 0.89." in text
    tight = claim_rows(spec, _accuracy_frame([0.505, 0.5, 0.503], [0.50, 0.51, 0.49]))[0]
    assert tight["verdict"] == "inconclusive" and "spread over 0.02, more than the effect (0.00267)" in tight["why"]
    flat = claim_rows(spec, _accuracy_frame([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]))[0]            # both at a ceiling
    assert flat["verdict"] == "inconclusive" and "spread" not in flat["why"]
    clear = claim_rows(spec, _accuracy_frame([0.95, 0.97, 0.96], [0.50, 0.52, 0.49]))[0]
    assert clear["verdict"] == "supported" and "spread" not in clear["why"]
