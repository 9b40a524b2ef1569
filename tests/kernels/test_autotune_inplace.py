"""Autotuned kernels that update an argument in place must restore it between timed runs.

Timing the configs of an autotuned kernel runs it many times on the same arguments. A
kernel that reads and then overwrites an argument (``_pairs_bwd_kernel`` turns dΔ into dR
in ``dx``) would, on the first call at a new shape, return that argument transformed once
per timed run: on an H100 the first autotuned backward returned NaN gradients while the
second was right. The interpreter and ``CARVELAB_AUTOTUNE=0`` run one config and never
time, so only this source check catches the mistake on a CPU: every pointer argument a
kernel both loads from and stores to must be in its autotuner's ``restore_value``.
"""
import ast
import inspect
import textwrap

import pytest

from carvelab.kernels import triton_chunk, triton_content, triton_covariance, triton_recurrent
from carvelab.kernels.tuning import TunedKernel

LOADS = {"_tile", "_row", "tl.load"}
STORES = {"_put", "tl.store"}
POINTER_HELPERS = {"matrix_tile_ptr", "matrix_slice_ptr"}


def _base_arg(expr: ast.AST, alias: dict, args: set):
    """The kernel argument a pointer expression is built on (``x + off``, ``p_x``), if any."""
    while isinstance(expr, ast.BinOp):
        expr = expr.left
    if isinstance(expr, ast.Name):
        name = alias.get(expr.id, expr.id)
        return name if name in args else None
    return None


def _loads_and_stores(fn) -> tuple[set, set]:
    """(arguments loaded from, arguments stored to) in a Triton function's source, following
    calls into the ``@triton.jit`` device functions it calls (an argument passed on to a
    helper that loads or stores it counts as loaded or stored here)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = tree.body[0]
    params = [a.arg for a in func.args.args]
    args = set(params)
    alias = {}
    for node in ast.walk(func):  # p = x + off; p, m = matrix_tile_ptr(x, ...); p_a, p_b = a + r, b + r
        if not isinstance(node, ast.Assign):
            continue
        target, value = node.targets[0], node.value
        if isinstance(value, ast.Call) and ast.unparse(value.func) in POINTER_HELPERS:
            base = _base_arg(value.args[0], alias, args)
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            if base and isinstance(names[0], ast.Name):
                alias[names[0].id] = base
            continue
        pairs = zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) \
            else [(target, value)]
        for t, v in pairs:
            base = _base_arg(v, alias, args)
            if isinstance(t, ast.Name) and base:
                alias[t.id] = base
    loaded, stored = set(), set()
    for node in ast.walk(func):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if node.args and name in LOADS | STORES:
            base = _base_arg(node.args[0], alias, args)
            if base and name in LOADS:
                loaded.add(base)
            if base and name in STORES:
                stored.add(base)
            continue
        callee = fn.__globals__.get(name)
        if name in POINTER_HELPERS or not inspect.isfunction(getattr(callee, "fn", None)):
            continue  # not a @triton.jit device function (compiled: a JITFunction; interpreted: its stand-in)
        c_loaded, c_stored = _loads_and_stores(callee.fn)
        c_params = [a.arg for a in ast.parse(textwrap.dedent(inspect.getsource(callee.fn))).body[0].args.args]
        passed = list(zip(c_params, node.args)) + [(k.arg, k.value) for k in node.keywords]
        for param, value in passed:
            base = _base_arg(value, alias, args)
            if base and param in c_loaded:
                loaded.add(base)
            if base and param in c_stored:
                stored.add(base)
    return loaded, stored


def read_and_written(fn) -> set:
    """Arguments of a Triton kernel that are both loaded from and stored to."""
    loaded, stored = _loads_and_stores(fn)
    return loaded & stored


def tuned_kernels():
    return [(mod.__name__.rsplit(".", 1)[-1], name, obj)
            for mod in (triton_chunk, triton_content, triton_recurrent, triton_covariance)
            for name, obj in vars(mod).items() if isinstance(obj, TunedKernel)]


def test_the_check_sees_every_tuned_kernel_and_the_known_in_place_one():
    found = {name: read_and_written(k.fn.fn) for _, name, k in tuned_kernels()}
    assert len(found) >= 10
    assert found["_pairs_bwd_kernel"] == {"dx"}  # through the device function _pairs_bwd_chunk
    assert found["_solve_fwd_kernel"] == {"A"}
    assert "dV" in found["_content_bwd_kernel"]  # accumulated over chunks: restored between timed runs


# Loaded and stored, but every run writes them before it reads them: repeated runs agree.
WRITTEN_BEFORE_READ = {
    ("triton_chunk", "_solve_fwd_kernel"): {"A"},  # blocks of the inverse, rebuilt from M
    ("triton_covariance", "_cov_bwd_kernel"): {"scratch"},  # P̄_t of a segment, re-run forward
    # the fused content gate's per-chunk stages hand tiles over through these buffers: each
    # chunk's stage writes them before the next stage (or chunk) reads them; h[0] = S_0 and
    # dh[NT−1] = dS_T are written first, m_0 and the last chunk's dm are never read
    ("triton_content", "_content_fwd_kernel"): {"A", "G", "M", "Qm", "W", "XA", "bb", "h", "mbuf"},
    ("triton_content", "_content_bwd_kernel"): {"dM", "dQm", "da0", "db", "dh", "dk", "dmb", "dob", "dq", "dq0",
                                                "du", "du0", "dx"},  # dx: dΔ, then dR in place, within the chunk
}


@pytest.mark.parametrize("module,name,kernel", tuned_kernels(), ids=lambda x: x if isinstance(x, str) else "")
def test_in_place_arguments_are_restored_between_timed_runs(module, name, kernel):
    needed = read_and_written(kernel.fn.fn) - WRITTEN_BEFORE_READ.get((module, name), set())
    assert needed <= set(kernel.autotuner.restore_value), (
        f"{module}.{name} reads and writes {sorted(needed)} but its autotune restores only "
        f"{kernel.autotuner.restore_value}: pass restore_value=... to autotune()")
