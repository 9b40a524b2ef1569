"""The layout as a map of the architecture: import direction, no cycles, small files.

The package's modules are read as source (``ast``), so these checks hold for every import,
including the ones inside functions.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"kernels": "carvelab.kernels", "carve_models": "carvelab.carve_models",
            "search_space": "carvelab.search_space", "trials": "carvelab.trials", "dashboards": "carvelab.dashboards"}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()


def imported(path: Path) -> set[str]:
    """carvelab modules ``path`` imports anywhere in it (``from pkg import submodule`` names the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("carvelab"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            out |= subs if subs and len(subs) == len(node.names) else {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("carvelab")}
    return out & set(MODULES)


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_carvelab_modules():
    assert cycles(GRAPH) == []


def test_no_import_cycle_inside_kernels():
    kernels = {m: {d for d in deps if d.startswith("carvelab.kernels")} for m, deps in GRAPH.items()
               if m.startswith("carvelab.kernels")}
    assert cycles(kernels) == []


def test_kernels_import_nothing_else_of_ours():
    for name, deps in GRAPH.items():
        if name.startswith("carvelab.kernels"):
            assert {d for d in deps if not d.startswith("carvelab.kernels")} == set(), name


def test_nothing_outside_kernels_imports_its_private_modules():
    for name, deps in GRAPH.items():
        if not name.startswith("carvelab.kernels"):
            private = {d for d in deps if d.startswith("carvelab.kernels.") and d.split(".")[2].startswith("_")}
            assert private == set(), f"{name} imports {private}; use carvelab.kernels' public names"


def test_no_module_is_longer_than_a_sitting():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _imports_of(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
    return out


def test_only_the_tracking_backend_imports_mlflow():
    importers = {name for name, path in MODULES.items() if "mlflow" in _imports_of(path)}
    assert importers == {"carvelab.trials.tracking.mlflow_backend"}


def test_the_sweep_reaches_optuna_through_its_public_api():
    """No module reads Optuna's storage or study id behind the study's back."""
    private = {name for name, path in MODULES.items() if name.startswith("carvelab.trials")
               and any(word in path.read_text() for word in ("_storage", "_study_id"))}
    assert private == set()
