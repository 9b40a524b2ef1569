"""``carvelab sweep status``: a table of a sweep's trials from its Optuna study."""
from __future__ import annotations

from pathlib import Path

import optuna

from carvelab.search_space.sweep_dir import SweepDir


def sweep_table(name: str, root: str | Path = "carvelab_sweeps") -> str:
    sd = SweepDir(root, name)
    spec = sd.spec()
    storage = spec.storage or sd.optuna_url
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    metrics = [o.metric for o in spec.objectives]  # as told to Optuna: measured on validation
    header = ["#", "state", "reason", "seed", "steps"] + metrics + ["point"] + (["tune"] if spec.tune else [])
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None] * len(metrics)
        rows.append([str(t.number), t.state.name, t.user_attrs.get("reason", ""), str(t.user_attrs.get("seed", "")),
                     str(t.user_attrs.get("steps", ""))] + [f"{v:.4g}" if v is not None else "" for v in values]
                    + [", ".join(f"{k}={v}" for k, v in t.params.items())]
                    + ([", ".join(f"{k}={v}" for k, v in (t.user_attrs.get("tune") or {}).items())] if spec.tune else []))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
