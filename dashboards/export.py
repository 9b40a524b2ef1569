"""Export winning configs: one YAML per point, re-runnable as-is with ``carvelab train FILE``.

Each file holds the fully resolved trial config (``model``, ``task``, ``train``; the model
with the vocabulary its task gave it in training) plus a ``provenance`` block (objective
values as reported (test split), seeds, the tune values selected on validation, MLflow run
ids, Optuna trial numbers, the carvelab version and git commit)
that the trial-config loader accepts and ignores.
``--format fla`` additionally writes the model part as a flash-linear-attention style
model config for the points that library's stock models express (Gated DeltaNet, KDA),
and lists the points it cannot express.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

import polars as pl
import yaml

from carvelab.carve_models.config import ModelConfig
from carvelab.dashboards.frame import SweepData, front_table
from carvelab.search_space.points import point_config

logger = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version() -> str:
    try:
        return metadata.version("carvelab")
    except metadata.PackageNotFoundError:
        return "unknown"


def select(table: pl.DataFrame, rank: Optional[int], top: Optional[int], objective: str, direction: str) -> pl.DataFrame:
    if rank is not None:
        table = table.filter(pl.col("pareto_rank") <= rank)
    table = table.sort(["pareto_rank", objective], descending=[False, direction == "maximize"])
    return table.head(top) if top else table


def export(data: SweepData, out: str | Path, rank: Optional[int] = 0, top: Optional[int] = None,
           fmt: str = "carvelab") -> list[Path]:
    if fmt not in ("carvelab", "fla"):
        raise ValueError(f"format={fmt!r} is not allowed; choose 'carvelab' or 'fla'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = front_table(data)  # reads the trials first: data.objectives is then what is reported
    metric, direction = data.objectives[0]
    chosen = select(table, rank, top, metric, direction)
    written, unsupported = [], []
    for i, row in enumerate(chosen.iter_rows(named=True)):
        point = json.loads(row["point"])
        seeds = row["seeds"] if "seeds" in row else [row["seed"]]
        numbers = row["numbers"] if "numbers" in row else [row["number"]]
        run_ids = row["run_ids"] if "run_ids" in row else [row["run_id"]]
        tune = json.loads(row.get("tune") or "{}")  # the point's selected tune values
        config = dataclasses.asdict(point_config(data.spec, point, int(seeds[0]), tune))
        config["train"]["checkpoint_dir"] = None
        vocab = _trained_vocab(data, run_ids[0])
        if vocab is not None:  # the task sets the vocabulary; the config's value was replaced
            config["model"]["vocab_size"] = vocab
        config["provenance"] = {
            "sweep": data.name, "pareto_rank": row["pareto_rank"], "point": point, "tune": tune,
            "objectives": {m: row[m] for m, _ in data.objectives}, "seeds": list(seeds),
            "mlflow_run_ids": list(run_ids), "optuna_trial_numbers": list(numbers),
            "carvelab_version": version(), "git_commit": git_commit(),
        }
        path = _unused(out / f"{data.name}-rank{row['pareto_rank']}-{i:02d}-trial{numbers[0]}.yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(path)
        if fmt == "fla":
            fla = fla_config(config["model"])
            if fla is None:
                unsupported.append(f"{path.name}: {describe(config['model'])}")
            else:
                fla_path = path.with_suffix(".fla.json")
                fla_path.write_text(json.dumps(fla, indent=2))
                written.append(fla_path)
    if unsupported:
        (out / "fla_unsupported.txt").write_text(
            "These points have no flash-linear-attention stock model (only Gated DeltaNet and KDA points "
            "are exported):\n" + "\n".join(unsupported) + "\n")
    return written


def _trained_vocab(data: SweepData, run_id: Optional[str]) -> Optional[int]:
    """The vocabulary the trial's model was built with (its ``vocab_size`` metric), if logged."""
    if not run_id:
        return None
    value = data.store.run(run_id).metrics.get("vocab_size")
    return None if value is None else int(value)


def _unused(path: Path) -> Path:
    """Never overwrite an earlier export: add a counter instead."""
    if not path.exists():
        return path
    k = 1
    while path.with_name(f"{path.stem}.{k}{path.suffix}").exists():
        k += 1
    return path.with_name(f"{path.stem}.{k}{path.suffix}")


def describe(model: dict) -> str:
    return ", ".join(f"{k}={model[k]}" for k in ("decay", "erase_axis", "erase_gate", "write_gate", "tie_gates",
                                                   "covariance", "eigen_range", "content_gate", "hybrid_ratio")
                     if k in model)


def fla_config(model: dict) -> Optional[dict]:
    """A flash-linear-attention style config for Gated DeltaNet / KDA points; None otherwise."""
    stock = (model["erase_axis"] == "key" and model["covariance"] == "reset" and not model["content_gate"]
             and model["tie_gates"] and model["sequence_mixing"])
    if not stock or model["decay"] not in ("scalar", "channel"):
        return None
    kind = "gated_deltanet" if model["decay"] == "scalar" else "kda"
    heads = model["n_heads"]
    head_dim = int(model["d_model"] * model["expand_k"]) // heads
    kinds = ModelConfig(**model).layer_kinds()
    if set(kinds) - {"recurrent", "attention"}:
        return None  # a layer kind fla's models do not have
    attn_layers = [i for i, k in enumerate(kinds) if k == "attention"]
    return {
        "model_type": kind, "hidden_size": model["d_model"], "num_hidden_layers": model["n_layers"],
        "num_heads": heads, "head_dim": head_dim, "expand_v": model["expand_v"] / model["expand_k"],
        "use_short_conv": True, "conv_size": model["conv_size"], "vocab_size": model["vocab_size"],
        "tie_word_embeddings": model["tie_embeddings"], "norm_eps": model["norm_eps"],
        # beta scaled to (0, 2): fla's name for eigen_range "[-1,1]" (configs older than the field: [0,1])
        "allow_neg_eigval": model.get("eigen_range", "[0,1]") == "[-1,1]",
        "attn": None if not attn_layers else {"layers": attn_layers, "num_heads": heads,
                                              "window_size": model["window"], "rope_theta": model["rope_theta"]},
    }
