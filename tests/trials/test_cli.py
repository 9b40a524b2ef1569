"""The carvelab command: version, help, train on the bundled config, clear config errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from carvelab.trials.cli import main

TINY = str(Path(__file__).resolve().parents[2] / "trials" / "configs" / "tiny_mqar.yaml")


def test_version_and_help_from_the_console_script():
    out = subprocess.run([sys.executable, "-m", "carvelab.trials.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("carvelab ")
    help_text = subprocess.run([sys.executable, "-m", "carvelab.trials.cli", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "train" in help_text and "sweep" in help_text


def test_train_bundled_config_prints_a_metrics_table(tmp_path, capsys):
    code = main(["train", TINY, "-q", "train.steps=4", "train.eval_every=2", "task.train_examples=64",
                 "task.val_examples=16", "model.d_model=16", f"task.cache_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "val_accuracy" in out and "tokens_per_s" in out and "completed" in out


def test_typo_in_config_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: gdn2\nmodel: {d_modle: 32}\n")
    assert main(["train", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert "model.d_modle" in err and "d_model" in err


def test_typo_in_override_is_named(capsys):
    assert main(["train", TINY, "-q", "train.stpes=3"]) == 2
    assert "train.stpes" in capsys.readouterr().err


def test_stray_argument_is_refused():
    with pytest.raises(SystemExit):
        main(["train", TINY, "--frobnicate"])


def test_suites_lists_the_registered_suites_and_one_suites_settings(capsys):
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    assert "mad  [66 settings, 6 baseline;" in out and "state_tracking  [4 settings, 3 baseline;" in out
    assert main(["suites", "zoology_mqar"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  mqar:seq_len=64,num_kv_pairs=4  (baseline)" and lines[-1] == "  mqar:seq_len=256,num_kv_pairs=64"
    assert main(["suites", "nope"]) == 2
    assert "suite 'nope' is not registered" in capsys.readouterr().err
