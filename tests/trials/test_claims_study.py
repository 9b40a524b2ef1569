"""A bundled claim study end to end at tiny size: real Ray, Optuna and MLflow, then the
verdict in the terminal, in an MLflow artifact and in the parent run's tags; and the same
study through bench_claims (no Ray, no MLflow)."""
import json

from mlflow.tracking import MlflowClient

from carvelab.dashboards.claims import VERDICTS
from carvelab.trials import bench_claims
from carvelab.trials.cli import main

TINY = ["base.train.steps=150", "seeds=[0,1]", "tune.train.lr=[3.0e-3]", "base.task.train_examples=4000",
        "base.task.val_examples=128", "base.task.test_examples=128", "base.model.backend=torch"]


def test_claims_lists_the_bundled_studies(capsys):
    assert main(["claims"]) == 0
    out = capsys.readouterr().out
    assert "claim_negative_eigenvalues" in out and "negative eigenvalues solve parity" in out and "gpu" in out


def test_a_claim_study_ends_in_a_verdict_everywhere(tmp_path, capsys):
    root = str(tmp_path / "sweeps")
    args = ["claims", "run", "claim_negative_eigenvalues", "--root", root, "-q",
            f"base.task.cache_dir={tmp_path / 'cache'}", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("| 0 |"))
    printed = line.split("**")[1]
    assert printed in VERDICTS and "eigen_range=[-1,1] vs baseline" in line and "| 2 |" in line
    # At this size the signed model is at ceiling on test and the unsigned one at chance.
    assert printed == "supported", out

    client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'claim_negative_eigenvalues' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("claim_negative_eigenvalues")
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`carvelab.role` = 'sweep'")[0]
    assert parent.data.tags["claim.0.verdict"] == printed
    assert parent.data.tags["claims.summary"] == "1 supported, 0 contradicted, 0 inconclusive"
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "claims")}
    assert names == {"claims/claims.md", "claims/claims.json"}
    rows = json.loads(open(client.download_artifacts(parent.info.run_id, "claims/claims.json",
                                                     str(tmp_path))).read())
    assert rows[0]["verdict"] == printed and rows[0]["n"] == 2 and rows[0]["ci_low"] > 0

    assert main(["claims", "verdict", "claim_negative_eigenvalues", "--root", root]) == 0
    assert line in capsys.readouterr().out


def test_bench_claims_runs_the_planned_configs_and_judges_them(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    one_seed = [f"base.task.cache_dir={tmp_path / 'cache'}", *TINY[:1], "seeds=[0]", *TINY[2:]]
    assert bench_claims.main(["run", "claim_negative_eigenvalues", "--out", str(out), "--workers", "2",
                              *one_seed]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["label"] for r in rows) == ["baseline", "eigen_range=[-1,1]"]
    assert all(r["status"] == "completed" and "test_accuracy" in r["metrics"] for r in rows)
    assert bench_claims.main(["verdict", "claim_negative_eigenvalues", str(out), "--md", str(tmp_path / "v.md"),
                              *one_seed]) == 0
    text = (tmp_path / "v.md").read_text()
    assert "**inconclusive**" in text and "1 seed pair(s): no interval" in text   # one seed: no interval
