"""Malformed sweep files, generated: every one is refused before launch.

``carvelab sweep run FILE`` (through ``carvelab.trials.cli.main``) must return 2 and print
one line, ``carvelab: error: ...``, naming the key path at fault (or the file, for bytes
that are not a YAML mapping); never a traceback; and leave no sweep directory and no MLflow
store behind. Each case starts from a valid tiny sweep and breaks one thing: wrong types,
unknown keys, bad dotted paths, contradictory axes, huge or negative budgets, bytes that
are not YAML, broken interpolations, malformed overrides.
"""
import contextlib
import copy
import io
import math
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carvelab.carve_models.config import ModelConfig
from carvelab.search_space import sweep_spec as S
from carvelab.search_space.points import MAX_TRIALS
from carvelab.search_space.sweep_loading import MAX_SECONDS
from carvelab.search_space.trial_config import TrainConfig
from carvelab.trials.sweep import driver
from carvelab.trials import pruners, tasks
from carvelab.trials.cli import main
from tests.reliability.ledger import LEDGER
from tests.trials.sweep_helpers import tiny_sweep

EXAMPLES = 300
VALID = tiny_sweep("fuzz", "/nonexistent/cache")
SECTION_FIELDS = {"model": ModelConfig, "task": tasks.task_class(VALID["base"]["task"]["name"]).Config,
                  "train": TrainConfig}


@dataclass
class Case:
    """One malformed input: a mapping (dumped as YAML) or raw bytes, extra overrides, and the
    substrings the error must contain (``FILE`` stands for the sweep file's path)."""

    kind: str
    data: object = None
    raw: bytes = None
    overrides: list = field(default_factory=list)
    expect: list = field(default_factory=list)


# Keys of one pruner's own spec: a case setting one names that pruner.
PRUNER_OF = {"min_peers": "pareto", "min_dominators": "pareto", "min_resource": "successive_halving",
             "reduction_factor": "hyperband"}


def with_value(path, value, base=None):
    data = copy.deepcopy(base or VALID)
    if path[0] == "pruner" and len(path) == 2 and path[1] in PRUNER_OF:
        data["pruner"] = {**data.get("pruner", {}), "name": PRUNER_OF[path[1]]}
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return data


def dotted(path):
    return ".".join(str(p) for p in path)


# ----------------------------------------------------------------------------- wrong types
WRONG = [
    (("name",), [[1], {"a": 1}, None, "has space", "", "x" * 101, "../up", "a/b"]),
    (("mode",), [["grid"], {"a": 1}, None, "grids", 5]),
    (("budget", "trials"), ["abc", 1.5, True, [1], {"a": 1}]),
    (("budget", "seconds"), ["x", [1], True, {"a": 1}]),
    (("resources", "cpus_per_trial"), ["x", [1], True]),
    (("resources", "gpus_per_trial"), ["x", [1], {"a": 1}]),
    (("resources", "concurrency"), ["x", 1.5, [1], True]),
    (("resources", "trial_timeout_s"), ["x", [1]]),
    (("resources", "max_retries"), ["x", 1.5, True]),
    (("sampler", "name"), [[1], {"a": 1}, "tpee", 7]),
    (("sampler", "seed"), ["x", 1.5, [1], True]),
    (("pruner", "name"), [[1], "asha", 3]),
    (("pruner", "warmup_steps"), ["x", 2.5]),
    (("seeds",), [5, "x", [1.5], ["a"], [[1]], [{"a": 1}], [None], [True], {"a": 1}]),
    (("objectives",), [5, "val_accuracy", [5], ["val_accuracy"], [None], [{"metric": 5}],
                       [{"metric": "val_accuracy", "direction": 1}], [[1]]]),
    (("space",), [5, [1], "x", True]),
    (("base",), [5, [1], True, 1.5, None, "nopreset", "missing.yaml"]),
    (("base", "model"), [5, "x", [1]]),
    (("base", "train", "steps"), ["x", -1, 0, 1.5, [1]]),
    (("base", "model", "d_model"), ["x", -16, 0, [1]]),
    (("base", "task", "name"), ["zzz", 5, [1]]),
    (("tracking",), [5, "x", [1]]),
    (("tracking", "uri"), [[1], {"a": 1}, 5, "not a uri", "/local/path/mlruns"]),
    (("storage",), [[1], {"a": 1}, 5, "optuna.db"]),
    (("ablation",), [5, "x", [1]]),
    (("ablation", "changes"), [5, "x", [1], [[1]], [{"erase_axis": "value"}]]),
]
AXIS_VALUES = ["key", None, 5, [], [None], [[1]], [{"a": 1}], {"type": "wat"}, {"choices": []}, {"type": "float"}]


def expected_for(path):
    if path[0] == "base" and len(path) > 1:
        return ["base", dotted(path[1:])]
    return [dotted(path)]


wrong_types = st.one_of(
    st.sampled_from(WRONG).flatmap(lambda pv: st.sampled_from(pv[1]).map(
        lambda v, p=pv[0]: Case("wrong type", with_value(p, v), expect=expected_for(p)))),
    st.tuples(st.sampled_from(sorted(S.AXES)), st.sampled_from(AXIS_VALUES)).map(
        lambda av: Case("wrong type", with_value(("space",), {av[0]: av[1]}), expect=[f"space.{av[0]}"])),
)

# ----------------------------------------------------------------------------- unknown keys
SECTIONS = {
    (): [f.name for f in fields(S.SweepFile)],
    ("sampler",): [f.name for f in fields(S.SamplerSpec)],
    ("pruner",): [f.name for f in fields(pruners.entry(VALID.get("pruner", {}).get("name", "none")).spec)],
    ("budget",): [f.name for f in fields(S.BudgetSpec)],
    ("resources",): [f.name for f in fields(S.ResourcesSpec)],
    ("tracking",): [f.name for f in fields(S.TrackingSpec)],
    ("ablation",): ["changes"],
    ("objectives", 0): ["metric", "direction"],
    ("base",): ["preset", "model", "task", "train", "provenance"],
    ("base", "model"): [f.name for f in fields(ModelConfig)],
    ("base", "task"): [f.name for f in fields(SECTION_FIELDS["task"])],
    ("base", "train"): [f.name for f in fields(TrainConfig)],
}
identifier = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


def unknown_key_case(section, key, value):
    data = copy.deepcopy(VALID)
    node = data
    for part in section:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[key] = value
    if section == ("objectives", 0):
        expect = ["objectives[0]", key]
    elif section and section[0] == "base":
        expect = ["base", dotted(section[1:] + (key,))]
    else:
        expect = [dotted(section + (key,))]
    return Case("unknown key", data, expect=expect)


unknown_keys = st.sampled_from(sorted(SECTIONS, key=str)).flatmap(
    lambda sec: st.tuples(st.just(sec), identifier.filter(lambda k, s=sec: k not in SECTIONS[s]),
                          st.one_of(st.integers(-5, 5), identifier))).map(lambda t: unknown_key_case(*t))

# ----------------------------------------------------------------------------- bad dotted paths
field_names = {name: {f.name for f in fields(cls)} for name, cls in SECTION_FIELDS.items()}
bad_paths = st.one_of(
    st.sampled_from(sorted(S.AXES)).flatmap(lambda a: st.sampled_from(
        [a.replace("_", "-"), a + "s", a.upper(), a.replace("_", ""), f"model.{a}x"])),
    st.tuples(st.sampled_from(sorted(SECTION_FIELDS)), identifier).filter(
        lambda t: t[1] not in field_names[t[0]]).map(".".join),
    st.tuples(identifier.filter(lambda s: s not in SECTION_FIELDS and s not in S.AXES), identifier).map(".".join),
    st.sampled_from(["", ".", "..", "model.", ".lr", "train..lr", "model.d_model.x", "train.lr.", " model.d_model",
                     "model.d_model ", "Model.d_model", "train/lr"]),
)


def bad_path_case(name, where):
    if where == "space":
        return Case("bad path", with_value(("space",), {name: ["a", "b"]}), expect=[f"space.{name}"])
    data = with_value(("mode",), "ablation")
    data["space"] = {}
    data["budget"] = {}
    data["ablation"] = {"changes": [{name: 1}]}
    return Case("bad path", data, expect=[f"ablation.changes[0].{name}"])


bad_path_cases = st.tuples(bad_paths, st.sampled_from(["space", "ablation"])).map(lambda t: bad_path_case(*t))

# ----------------------------------------------------------------------------- contradictory axes
finite = dict(allow_nan=False, allow_infinity=False)


def space_case(space, expect, **changes):
    data = with_value(("space",), space)
    for key, value in changes.items():
        data[key] = value
    return Case("contradiction", data, expect=expect)


def ablation_case(changes, expect, space=None):
    data = with_value(("mode",), "ablation")
    data["space"] = space or {}
    data["budget"] = {}
    data["ablation"] = {"changes": changes}
    return Case("contradiction", data, expect=expect)


def infeasible_case():
    data = with_value(("space",), {"write_gate": ["per_value"]})
    data["base"]["preset"] = "kda"  # tied gates: a per-value write gate is never feasible
    return Case("contradiction", data, expect=["space"])


contradictions = st.one_of(
    st.floats(1e-5, 1.0, **finite).flatmap(lambda hi: st.floats(hi, 10.0, **finite).map(
        lambda lo, hi=hi: space_case({"train.lr": {"type": "float", "low": lo, "high": hi}}, ["space.train.lr"]))),
    st.integers(1, 10**6).flatmap(lambda hi: st.integers(hi, 10**7).map(
        lambda lo, hi=hi: space_case({"train.steps": {"type": "int", "low": lo, "high": hi}}, ["space.train.steps"]))),
    st.tuples(st.floats(-1.0, 0.0, **finite), st.floats(0.1, 1.0, **finite)).map(
        lambda t: space_case({"train.lr": {"type": "log_float", "low": t[0], "high": t[1]}}, ["space.train.lr"])),
    st.sampled_from([("erase_axis", ["key", "key"]), ("chunk_size", [16, 16, 32]), ("write_gate", ["scalar"] * 3),
                     ("content_gate", [True, "on"])]).map(
        lambda av: space_case({av[0]: av[1]}, [f"space.{av[0]}"])),
    identifier.filter(lambda s: s not in ("key", "value")).map(
        lambda v: space_case({"erase_axis": [v]}, ["space.erase_axis[0]"])),
    st.sampled_from(["content_rank", "content_target"]).map(
        lambda a: space_case({a: [1, 2] if a == "content_rank" else ["key", "value"]}, [f"space.{a}"])),
    st.just(space_case({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, ["space.train.lr"],
                       sampler={"name": "grid"})),
    st.just(space_case({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, ["space.train.lr"],
                       mode="grid", budget={})),
    st.just(space_case({"train.steps": {"type": "int", "low": 1, "high": 10**7}}, ["space.train.steps"],
                       mode="grid", budget={})),
    st.just(space_case({"train.steps": {"type": "int", "low": 1, "high": 9, "step": 0.5}}, ["space.train.steps.step"])),
    st.sampled_from([math.inf, -math.inf, math.nan]).map(
        lambda v: space_case({"train.lr": {"type": "float", "low": 1e-4, "high": v}}, ["space.train.lr"])),
    st.sampled_from([math.inf, math.nan]).map(lambda v: space_case({"train.lr": [1e-3, v]}, ["space.train.lr[1]"])),
    st.just(ablation_case([{"erase_axis": "value"}], ["space"], space={"chunk_size": [16, 32]})),
    st.just(ablation_case([{"erase_axis": "sideways"}], ["ablation.changes[0]"])),
    st.just(ablation_case([{}], ["ablation.changes[0]"])),
    st.just(ablation_case([], ["ablation.changes"])),
    st.just(infeasible_case()),
    st.just(Case("contradiction", with_value(("objectives",), [{"metric": "val_accuracy", "direction": "maximize"},
                                                              {"metric": "val_accuracy", "direction": "minimize"}]),
                 expect=["objectives[1].metric"])),
    st.just(Case("contradiction", with_value(("objectives",), [{"metric": "params", "direction": "minimize"}]),
                 expect=["objectives"])),
    st.just(Case("contradiction", with_value(("pruner",), {"name": "median", "metric": "params"}),
                 expect=["pruner.metric"])),
    st.integers(0, 100).map(lambda s: Case("contradiction", with_value(("seeds",), [s, s]), expect=["seeds"])),
    st.just(Case("contradiction", with_value(("budget",), {}), expect=["budget"])),
    st.just(Case("contradiction", with_value(("objectives",), []), expect=["objectives"])),
    st.just(Case("contradiction", with_value(("seeds",), []), expect=["seeds"])),
)

# ----------------------------------------------------------------------------- huge / negative numbers
numbers = [
    (("budget", "trials"), st.one_of(st.integers(max_value=0), st.integers(MAX_TRIALS + 1, 10**40))),
    (("budget", "seconds"), st.one_of(st.floats(max_value=0.0, allow_nan=False),
                                      st.floats(min_value=MAX_SECONDS * 1.01, allow_nan=False),
                                      st.just(math.nan))),
    (("resources", "concurrency"), st.one_of(st.integers(max_value=0), st.integers(10_001, 10**30))),
    (("resources", "cpus_per_trial"), st.one_of(st.floats(max_value=0.0), st.floats(min_value=1024.5),
                                                st.just(math.nan))),
    (("resources", "gpus_per_trial"), st.one_of(st.floats(max_value=-1e-9),
                                                st.floats(1.01, 1e6, **finite).filter(lambda g: g != int(g)),
                                                st.sampled_from([math.nan, math.inf]))),
    (("resources", "trial_timeout_s"), st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf]))),
    (("resources", "max_retries"), st.integers(max_value=-1)),
    (("seeds",), st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)).map(lambda s: [s])),
    (("sampler", "seed"), st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31))),
    (("sampler", "n_startup_trials"), st.integers(max_value=-1)),
    (("sampler", "population_size"), st.integers(max_value=1)),
    (("pruner", "warmup_steps"), st.integers(max_value=-1)),
    (("pruner", "min_peers"), st.integers(max_value=0)),
    (("pruner", "min_resource"), st.integers(max_value=0)),
    (("pruner", "reduction_factor"), st.integers(max_value=1)),
]
huge = st.integers(10**309, 10**400)  # beyond any float
numbers += [
    (("space",), huge.map(lambda v: {"train.steps": {"type": "int", "low": 1, "high": v}})),
    (("space",), huge.map(lambda v: {"train.lr": {"type": "float", "low": 1e-4, "high": v}})),
    (("space",), huge.map(lambda v: {"train.steps": {"type": "int", "low": 1, "high": 9, "step": v}})),
    (("space",), huge.map(lambda v: {"chunk_size": [16, v]})),
]
bad_numbers = st.sampled_from(range(len(numbers))).flatmap(
    lambda i: numbers[i][1].map(lambda v, p=numbers[i][0]: Case(
        "bad number", with_value(p, v), expect=[f"space.{next(iter(v))}" if p == ("space",) else dotted(p)])))

# ----------------------------------------------------------------------------- not YAML
SYNTAX = ["name: [unclosed", "a: b: c", "\tname: x", "name: 'x", "- a\nb: c", "{", "]", "name: *undefined",
          "name: !!python/object/apply:os.system ['true']", "%YAML 9.9\n---\na: 1", "a: 1\n---\nb: 2",
          "? [1, 2]\n: x", "name: x\n  base: y", "name: \"\\q\"", "@name: x"]


def laughs(levels):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


not_yaml = st.one_of(
    st.binary(max_size=300).map(lambda b: Case("bytes", raw=b, expect=["FILE"])),
    st.binary(max_size=100).map(lambda b: Case("bytes", raw=b"\xff\xfe" + b, expect=["FILE", "UTF-8"])),
    st.sampled_from(SYNTAX).map(lambda t: Case("bytes", raw=t.encode(), expect=["FILE"])),
    st.text(max_size=200).map(lambda t: Case("bytes", raw=t.encode("utf-8", "surrogatepass"), expect=["FILE"])),
    st.integers(40, 3000).map(lambda n: Case("bytes", raw=f"name: {'[' * n}{']' * n}\n".encode(),
                                             expect=["FILE", "nested"])),
    st.integers(40, 3000).map(lambda n: Case("bytes", raw=("name: " + "{a: " * n + "1" + "}" * n + "\n").encode(),
                                             expect=["FILE", "nested"])),
    st.integers(6, 9).map(lambda n: Case("bytes", raw=laughs(n).encode(), expect=["FILE", "expands to more than"])),
    st.one_of(st.lists(st.integers(), max_size=5), st.text(max_size=20), st.integers(), st.floats()).map(
        lambda v: Case("bytes", raw=yaml.safe_dump(v).encode(), expect=["FILE"])),
    st.sampled_from([{1: 2}, {None: "x"}, {True: 1}, {"space": {5: [1]}}, {"base": {"model": {3: 1}}}]).map(
        lambda d: Case("bytes", raw=yaml.safe_dump({**VALID, **d}).encode(), expect=["FILE", "keys must be strings"])),
)

# ----------------------------------------------------------------------------- interpolations, overrides
interpolations = st.sampled_from([
    (("budget", "trials"), "${nope}"), (("budget", "trials"), "${budget}"), (("name",), "${name}"),
    (("name",), "${oc.env:CARVELAB_FUZZ_UNSET_VARIABLE}"), (("budget", "seconds"), "${budget.nope}"),
    (("name",), "${"), (("resources", "concurrency"), "${oc.decode:[1]}"),
]).map(lambda pv: Case("interpolation", with_value(*pv), expect=[dotted(pv[0])]))

overrides = st.sampled_from([
    (["budget.trials=abc"], ["budget.trials"]), (["sampler..name=x"], ["sampler..name"]), (["=3"], ["=3"]),
    (["budget=5"], ["budget"]), (["seeds=[-1]"], ["seeds"]), (["space.erase_axis=[]"], ["space.erase_axis"]),
    (["resources.concurrency=0"], ["resources.concurrency"]), (["budget.trials=${nope}"], ["budget.trials"]),
    (["sampler.name=grid", "space.chunk_size={type: float, low: 16, high: 64}"], ["space.chunk_size"]),
    (["budget.trials=3", "budget.trials.x=1"], ["budget.trials"]), (["base.model.d_modle=8"], ["base", "d_modle"]),
    (["mode=[grid"], ["mode"]),
]).map(lambda oe: Case("override", copy.deepcopy(VALID), overrides=oe[0], expect=oe[1]))

malformed = st.one_of(wrong_types, unknown_keys, bad_path_cases, contradictions, bad_numbers, not_yaml,
                      interpolations, overrides)


# ----------------------------------------------------------------------------- the test
def refused(case: Case, folder: Path) -> str:
    """Run ``carvelab sweep run`` on the case; return stderr after checking the refusal."""
    path = folder / "sweep.yaml"
    path.write_bytes(case.raw if case.raw is not None else yaml.safe_dump(case.data, sort_keys=False).encode())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sweep", "run", str(path), *case.overrides, "--root", str(folder / "sweeps"), "-q"])
    message = err.getvalue()
    context = f"{case.kind}: {case.raw if case.raw is not None else case.data} {case.overrides}\n{message}"
    assert code == 2, context
    assert "Traceback" not in message and not out.getvalue().strip(), context
    lines = message.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("carvelab: error: "), context
    for needle in case.expect:
        assert (str(path) if needle == "FILE" else needle) in lines[0], f"{needle!r} not named: {context}"
    assert not (folder / "sweeps").exists(), context  # no sweep directory
    assert not (folder / "mlruns").exists() and not list(folder.rglob("*.db")), context  # no MLflow store
    return lines[0]


@pytest.fixture
def no_launch(monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("a malformed sweep was launched")

    monkeypatch.setattr(driver, "run_sweep", launched)


def test_malformed_sweeps_are_refused_before_launch(no_launch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an MLflow default store would appear here
    monkeypatch.delenv("CARVELAB_FUZZ_UNSET_VARIABLE", raising=False)
    seen = {"n": 0, "kinds": set()}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=malformed)
    def check(case):
        LEDGER.inputs_tried += 1
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            refused(case, Path(folder))
        LEDGER.inputs_refused += 1
        seen["n"] += 1
        seen["kinds"].add(case.kind)

    check()
    assert seen["n"] >= 200, f"only {seen['n']} examples ran"
    assert len(seen["kinds"]) == 8, seen["kinds"]
    assert not [p for p in tmp_path.iterdir()], "something was left in the working directory"
