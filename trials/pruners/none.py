"""``pruner: {name: none}``: every trial trains to the end."""
from __future__ import annotations

from typing import Optional

from carvelab.trials.pruners.base import PrunerSpec, register
from carvelab.trials.reporting import CONTINUE


@register("none", PrunerSpec)
class NoPruner:
    def __init__(self, spec: PrunerSpec, objectives: list, seed: int = 0):
        self.spec = spec

    def decide(self, trial: int, step: int, metrics: dict[str, float]) -> str:
        return CONTINUE

    def complete(self, trial: int, state: str, value: Optional[float]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
