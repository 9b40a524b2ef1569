"""Task suites: named lists of task settings a sweep declares with ``suite:``.

    suite: mad                                # every setting of MAD's grid (66)
    suite: {name: mad, settings: baseline}    # each task's baseline only (6)
    suite: {name: mad, settings: [mad_fuzzy_recall, "mad_noisy_recall:frac_noise=0.8"]}   # these labels

A *setting* is a ``task:`` mapping: the task's ``name`` and the keys where the setting
departs from that task's defaults. Its *label* names it in the sweep's points, in MLflow
and in the dashboards: ``mad_fuzzy_recall`` for a baseline, ``mad_fuzzy_recall:seq_len=256``
for a change (``key=value`` pairs after the task, comma-separated, in the setting's order).
A suite lists each task's baseline first; ``settings: baseline`` keeps only those.

The bundled suites:

    mad             MAD's benchmark grid (Poli et al. 2024; ``mad.MAD_SETTINGS``): six tasks,
                    each at its baseline and every one-factor change, 66 settings
    zoology_mqar    Zoology's MQAR grid (Arora et al. 2023): (T, pairs) = (64, 4), (128, 8),
                    (256, 16), (256, 32), (256, 64), vocabulary from the base config
    state_tracking  parity, modular arithmetic without and with brackets, S5 composition
                    (Grazzi et al. 2024), trained on lengths 3-40 and tested on 41-256
    needle          RULER-style retrieval: single key, multi-key (4 needles) and
                    multi-value (4 values per needle)

``register_suite`` adds one defined elsewhere (every setting's task must be registered).
The sweep side (validation, the ``suite`` parameter of the points) is
``carvelab.search_space.suite_loading``; the aggregation, ``carvelab.dashboards.suite``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from carvelab.trials.tasks.mad import MAD_SETTINGS

WHICH = ("all", "baseline")   # the values of a sweep's suite.settings


@dataclass(frozen=True)
class Suite:
    """A named list of task settings; each task's first setting is its baseline."""

    name: str
    description: str
    settings: tuple[Mapping[str, Any], ...]

    def tasks(self) -> list[str]:
        """The suite's task names, in order of first appearance."""
        return list(dict.fromkeys(s["name"] for s in self.settings))

    def selected(self, which: Any = "all") -> dict[str, dict]:
        """``{label: task mapping}`` of every setting (``all``), each task's first (``baseline``)
        or the settings of a list of labels (in the list's order)."""
        if isinstance(which, (list, tuple)):
            return self._labelled(which)
        if which not in WHICH:
            raise ValueError(f"settings={which!r} is not allowed; choose one of {list(WHICH)} or a list of "
                             f"the suite's setting labels")
        out: dict[str, dict] = {}
        seen: set[str] = set()
        for setting in self.settings:
            if which == "baseline" and setting["name"] in seen:
                continue
            seen.add(setting["name"])
            out[setting_label(setting)] = dict(setting)
        return out

    def _labelled(self, labels) -> dict[str, dict]:
        every = self.selected("all")
        if not labels:
            raise ValueError("settings=[]: name at least one setting")
        out: dict[str, dict] = {}
        for label in labels:
            if label not in every:
                raise ValueError(f"settings: {label!r} is not a setting of the suite {self.name!r}; its labels are "
                                 f"listed by `carvelab suites {self.name}`")
            if label in out:
                raise ValueError(f"settings: {label!r} is listed twice")
            out[label] = every[label]
        return out


def setting_label(setting: Mapping[str, Any]) -> str:
    """``task`` or ``task:key=value,key=value`` (the setting's keys other than ``name``)."""
    rest = [f"{k}={_text(v)}" for k, v in setting.items() if k != "name"]
    return setting["name"] + (":" + ",".join(rest) if rest else "")


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _mad() -> tuple[dict, ...]:
    return tuple({"name": task, **change} for task, changes in MAD_SETTINGS.items() for change in changes)


SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    """Add ``suite`` under its name (a name already taken is refused)."""
    from carvelab.trials.tasks import task_class

    if not isinstance(suite, Suite) or not suite.settings:
        raise TypeError(f"{suite!r} must be a Suite with at least one setting")
    if suite.name in SUITES:
        raise ValueError(f"a suite named {suite.name!r} is already registered")
    labels = [setting_label(s) for s in suite.settings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"suite {suite.name!r} lists a setting twice: {labels}")
    for setting in suite.settings:
        task_class(setting["name"])          # raises ValueError naming the registered tasks
    SUITES[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"suite {name!r} is not registered; registered: {sorted(SUITES)}")
    return SUITES[name]


def _register_bundled() -> None:
    register_suite(Suite("mad", "MAD's six synthetic tasks, each at its baseline and every one-factor change "
                         "(Poli et al. 2024)", _mad()))
    register_suite(Suite("zoology_mqar", "Zoology's MQAR grid of (seq_len, num_kv_pairs) (Arora et al. 2023)", tuple(
        {"name": "mqar", "seq_len": t, "num_kv_pairs": n} for t, n in ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
    )))
    register_suite(Suite("state_tracking", "parity, modular arithmetic without and with brackets, S5 permutation "
                         "composition; train lengths 3-40, test 41-256 (Grazzi et al. 2024)", (
                             {"name": "parity"}, {"name": "modular_arithmetic"},
                             {"name": "modular_arithmetic", "brackets": True}, {"name": "s5"})))
    register_suite(Suite("needle", "RULER-style retrieval: single key, multi-key, multi-value", (
        {"name": "needle"}, {"name": "needle", "num_needles": 4}, {"name": "needle", "num_values": 4})))


_register_bundled()
