"""GPU benchmark of our Triton kernels against flash-linear-attention, in one run.

    python -m carvelab.kernels.bench --gpu                      # full figures, JSON to --out
    python -m carvelab.kernels.bench --gpu --shapes small       # a quick look
    python -m carvelab.kernels.bench --gpu --warm-jobs 12       # compile in 12 processes first
    python -m carvelab.kernels.bench --gpu --warm-only --warm-jobs 8 --warm-deadline 240   # compile only, 4 min at most

flash-linear-attention (``fla-core``) is an optional, benchmark-only dependency. For each
shape the same bf16 inputs go to both libraries; correctness (ours vs the fp32 reference
on a small shape, ours vs fla on the benchmark inputs) is checked first and a speed ratio
is printed only where it passed. Times are medians of CUDA-event timings after warm-up;
memory is the peak allocated beyond the inputs. The HBM floor is the minimum bytes a
kernel must move (inputs read, outputs written) over the copy bandwidth measured in the
same run.

Compilation and autotuning (flash-linear-attention's first call at a shape tries dozens
of configurations per kernel, for minutes) happen before any timing. With
``--warm-jobs N`` one untimed forward+backward per (library, point, shape) runs first in
N parallel processes sharing the Triton cache; the autotune choices those concurrent
processes made are then deleted from the cache, so the timing process re-times every
configuration alone on the GPU (cheap: the binaries are cached) and both libraries are
timed at their own best configurations.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SHAPES = {"large": dict(B=4, T=4096, H=16, D=128), "small": dict(B=16, T=512, H=4, D=64)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def cuda_time(fn: Callable[[], object], reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs (CUDA events) after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs() -> float:
    x = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB
    ms = cuda_time(lambda: x.clone(), reps=10)
    return 2 * x.numel() / (ms * 1e-3) / 1e9


def make_inputs(B, T, H, D, dtype=torch.bfloat16, seed=0, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    q = F.normalize(r(B, T, H, D), dim=-1).to(dtype)
    k = F.normalize(r(B, T, H, D), dim=-1).to(dtype)
    v = r(B, T, H, D).to(dtype)
    g = (-F.softplus(r(B, T, H, D)) * 0.1).float()
    b = torch.sigmoid(r(B, T, H, D)).float()
    w = torch.sigmoid(r(B, T, H, D)).float()
    beta = torch.sigmoid(r(B, T, H)).float()
    g_head = (-F.softplus(r(B, T, H)) * 0.1).float()
    return dict(q=q, k=k, v=v, g=g, b=b, w=w, beta=beta, g_head=g_head)


def leaf_inputs(shape: str) -> dict:
    """make_inputs at a named shape, every tensor a leaf that requires grad."""
    return {n: t.requires_grad_() for n, t in make_inputs(**SHAPES[shape]).items()}


def qkv_grads(o: torch.Tensor, x: dict, do: torch.Tensor):
    return torch.autograd.grad(o, [x["q"], x["k"], x["v"]], do)


# The points timed for each shape (keys of ``points``), and those fla has a kernel for.
# gdn2+content_gate: the fused content-gate kernels (triton_content); _loop: the per-chunk
# loop they replace, replayed from CUDA graphs (CARVELAB_FUSED_CONTENT=0).
POINTS = ("gdn2", "kda", "gdn", "gdn2+content_gate", "gdn2+content_gate_loop", "gdn2_value_axis_recurrent",
          "gdn2_key_axis_recurrent", "gdn2[fast]", "kda[fast]", "gdn[fast]", "gdn2+content_gate[fast]",
          "gdn2+content_gate_loop[fast]")
# Ours-only points reported as a multiple of our GDN-2 chunked kernel (exact, or [fast] for [fast]).
RELATIVE_POINTS = ("gdn2+content_gate", "gdn2+content_gate_loop", "gdn2_value_axis_recurrent",
                   "gdn2_key_axis_recurrent", "gdn2+content_gate[fast]", "gdn2+content_gate_loop[fast]")
FLA_POINTS = ("gdn2", "kda", "gdn", "gdn2[fast]", "kda[fast]", "gdn[fast]")


def points(x):
    """name -> (our call, fla call or None), all on the same inputs."""
    from carvelab.kernels._args import ContentGate
    from carvelab.kernels.options import RecurrenceOptions
    from carvelab.kernels.triton_ops import fused_content
    from carvelab.kernels.triton_ops import triton_chunk_gated_delta as chunk
    from carvelab.kernels.triton_ops import triton_recurrent_gated_delta as recurrent

    q, k, v, g, b, w, beta, gh = (x[n] for n in ("q", "k", "v", "g", "b", "w", "beta", "g_head"))
    H, dv, dk = q.shape[2], v.shape[-1], q.shape[-1]
    gen = torch.Generator(device="cuda").manual_seed(1)
    content = ContentGate(U=torch.zeros(H, dk, 4, device="cuda", requires_grad=True),
                          V=(torch.randn(H, 4, dv, generator=gen, device="cuda") / dv ** 0.5).requires_grad_(),
                          target="erase")
    logits = torch.logit(b.clamp(1e-4, 1 - 1e-4))
    fast, value = RecurrenceOptions(precision="fast"), RecurrenceOptions(erase_axis="value")

    def loop(fn):  # the per-chunk content-gate loop (graph-replayed) instead of the fused kernels
        with fused_content(False):
            return fn()

    fla = _fla()
    return {
        "gdn2": (lambda: chunk(q, k, v, g, b, w).o,
                 None if fla is None else lambda: fla["gdn2"](q, k, v, g, b.to(q.dtype), w.to(q.dtype))[0]),
        "kda": (lambda: chunk(q, k, v, g, beta, beta).o,
                None if fla is None else lambda: fla["kda"](q, k, v, g, beta.to(q.dtype))[0]),
        "gdn": (lambda: chunk(q, k, v, gh, beta, beta).o,
                None if fla is None else lambda: fla["gdn"](q, k, v, gh, beta.to(q.dtype))[0]),
        "gdn2+content_gate": (lambda: chunk(q, k, v, g, logits, w, content=content).o, None),
        "gdn2+content_gate_loop": (lambda: loop(lambda: chunk(q, k, v, g, logits, w, content=content).o), None),
        "gdn2_value_axis_recurrent": (lambda: recurrent(q, k, v, g, b, w, None, value).o, None),
        "gdn2_key_axis_recurrent": (lambda: recurrent(q, k, v, g, b, w).o, None),
        # precision="fast": bf16 tensor-core products, TF32 solve (kernels/options.py)
        "gdn2[fast]": (lambda: chunk(q, k, v, g, b, w, None, fast).o,
                       None if fla is None else lambda: fla["gdn2"](q, k, v, g, b.to(q.dtype), w.to(q.dtype))[0]),
        "kda[fast]": (lambda: chunk(q, k, v, g, beta, beta, None, fast).o,
                      None if fla is None else lambda: fla["kda"](q, k, v, g, beta.to(q.dtype))[0]),
        "gdn[fast]": (lambda: chunk(q, k, v, gh, beta, beta, None, fast).o,
                      None if fla is None else lambda: fla["gdn"](q, k, v, gh, beta.to(q.dtype))[0]),
        "gdn2+content_gate[fast]": (lambda: chunk(q, k, v, g, logits, w, None, fast, content=content).o, None),
        "gdn2+content_gate_loop[fast]": (
            lambda: loop(lambda: chunk(q, k, v, g, logits, w, None, fast, content=content).o), None),
    }


USE_FLA = True
SELECTED: tuple = ()  # the points to run (empty: all of POINTS)


def selected(names) -> list:
    return [n for n in names if not SELECTED or n in SELECTED]


def _fla():
    if not USE_FLA:
        return None
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gdn2 import chunk_gdn2
        from fla.ops.kda import chunk_kda
    except ImportError as exc:
        logger.warning("flash-linear-attention is not importable (%s): comparing our kernels only", exc)
        return None
    return {"gdn2": chunk_gdn2, "kda": chunk_kda, "gdn": chunk_gated_delta_rule}


# The gate forms of the points timed against fla, as (decay, erase gate, write gate) names
# of ``make_inputs``: per-channel b and w (gdn2), one per-token beta as both gates (kda: the
# kernels read it as one column), a per-head decay with beta (gdn). The reference check and
# the HBM floor read them from here.
GATE_FORMS = {"gdn2": ("g", "b", "w"), "kda": ("g", "beta", "beta"), "gdn": ("g_head", "beta", "beta")}


def check_against_reference(T: int = 100, device: str = "cuda") -> dict:
    """fp32, small shape: our Triton kernels vs the token-by-token reference (outputs and
    grads), for every gate form of ``GATE_FORMS``. Errors are keyed "o", "dq", ... for
    gdn2 and "kda:o", "kda:dq", ... for the others; a gate used twice (beta) gets one
    gradient, the sum of both uses, on both sides."""
    from carvelab.kernels.options import RecurrenceOptions
    from carvelab.kernels.reference import gated_delta_reference
    from carvelab.kernels.triton_ops import triton_chunk_gated_delta

    x = make_inputs(1, T, 2, 32, dtype=torch.float32, seed=3, device=device)
    gen = torch.Generator(device=device).manual_seed(4)
    errs = {}
    for form, gates in GATE_FORMS.items():
        names = ("q", "k", "v", *gates)
        ours, ref = ({n: x[n].detach().clone().requires_grad_() for n in names} for _ in range(2))
        o = triton_chunk_gated_delta(*(ours[n] for n in names), None, RecurrenceOptions(chunk_size=32)).o
        o_ref = gated_delta_reference(*(ref[n] for n in names)).o
        do = torch.randn(o_ref.shape, generator=gen, device=device)
        (o * do).sum().backward()
        (o_ref * do).sum().backward()
        key = "" if form == "gdn2" else f"{form}:"
        errs[f"{key}o"] = rel_err(o, o_ref)
        errs.update({f"{key}d{n}": rel_err(ours[n].grad, ref[n].grad) for n in ours})
    passed = all(v <= (1e-4 if k.split(":")[-1] == "o" else 1e-3) for k, v in errs.items())
    return {"errors": errs, "passed": passed}


def hbm_floor_bytes(x: dict, name: str, backward: bool) -> int:
    """Bytes that must cross HBM at least: inputs read + output written (+ grads for fwd+bwd)."""
    used = {"q", "k", "v", *GATE_FORMS[name]}  # beta, used twice, is read once
    inputs = sum(x[n].numel() * x[n].element_size() for n in used)
    out = x["v"].numel() * x["v"].element_size()
    return inputs + out if not backward else 2 * inputs + 2 * out  # + read dO, write every input grad


def time_point(ours, theirs, x: dict, label: str = "") -> dict:
    """Forward and forward+backward medians and peak extra memory of our call and fla's (if
    any) on the same inputs, and how far their outputs and q/k/v gradients differ."""
    row = {}
    for who, fn in (("ours", ours), ("fla", theirs)):
        if fn is None:
            continue
        try:
            o = fn()
            do = torch.randn(o.shape, generator=torch.Generator(device="cuda").manual_seed(2), device="cuda")
            grads = qkv_grads(fn(), x, do)
            row[who] = {
                "fwd_ms": cuda_time(lambda: fn()),
                "fwd_bwd_ms": cuda_time(lambda: qkv_grads(fn(), x, do)),
                "peak_extra_mb": peak_extra_mb(lambda: qkv_grads(fn(), x, do)),
            }
            row[who]["_o"] = [o.detach(), *grads]
        except Exception as exc:  # one failing point must not hide the others' figures
            logger.exception("%s %s failed", who, label)
            row[who] = {"error": f"{type(exc).__name__}: {exc}"}
    if "ours" in row and "fla" in row and "_o" in row["ours"] and "_o" in row["fla"]:
        errs = [rel_err(a, b) for a, b in zip(row["ours"]["_o"], row["fla"]["_o"])]
        row["rel_err_vs_fla"] = errs[0]
        row["grad_rel_err_vs_fla"] = dict(zip(("dq", "dk", "dv"), errs[1:]))
        # bf16 inputs, different summation orders; a large gradient gap flags a miscompile
        row["matches_fla"] = errs[0] <= 2e-2
        row["grads_match_fla"] = max(errs[1:]) <= 5e-2
        if row["matches_fla"]:
            row["fwd_bwd_ratio_vs_fla"] = row["ours"]["fwd_bwd_ms"] / row["fla"]["fwd_bwd_ms"]
            row["fwd_ratio_vs_fla"] = row["ours"]["fwd_ms"] / row["fla"]["fwd_ms"]
    for who in ("ours", "fla"):
        if who in row:
            row[who].pop("_o", None)
    return row


def bench_shape(shape: str, bandwidth: float, progress: Callable[[dict], None] = lambda out: None) -> dict:
    """Every selected point at one shape; ``progress(out)`` after each point, so a run cut
    short (a time limit, a hung compile) keeps the points it timed."""
    x = leaf_inputs(shape)
    out = {"shape": SHAPES[shape], "dtype": "bfloat16", "points": {}}
    pts = points(x)
    for name in selected(pts):
        print(f"[{shape}] timing {name} ...", flush=True)  # a run cut short shows where it was
        row = time_point(*pts[name], x, name)
        if name in FLA_POINTS and "fwd_bwd_ms" in row.get("ours", {}):
            floor_ms = hbm_floor_bytes(x, name.removesuffix("[fast]"), True) / (bandwidth * 1e9) * 1e3
            row["hbm_floor_fwd_bwd_ms"] = floor_ms
            row["ours_x_floor"] = row["ours"]["fwd_bwd_ms"] / floor_ms
        out["points"][name] = row
        print(f"[{shape}] {name}: {json.dumps(row, default=str)}", flush=True)
        progress(out)
    p = out["points"]
    for name in ("gdn2+content_gate", "gdn2+content_gate[fast]"):
        if "fwd_bwd_ms" in p.get(name, {}).get("ours", {}):
            p[name]["grid"] = content_grid(SHAPES[shape], p[name]["ours"]["fwd_bwd_ms"])
    for name in RELATIVE_POINTS:
        base = p.get("gdn2[fast]" if name.endswith("[fast]") else "gdn2", {}).get("ours", {})
        t = p.get(name, {}).get("ours", {})
        if base.get("fwd_bwd_ms") and t.get("fwd_bwd_ms"):
            p[name]["fwd_bwd_ratio_vs_gdn2_chunk"] = t["fwd_bwd_ms"] / base["fwd_bwd_ms"]
            p[name]["peak_extra_mb_ratio_vs_gdn2_chunk"] = t["peak_extra_mb"] / base["peak_extra_mb"]
    return out


def content_grid(shape: dict, fwd_bwd_ms: float, chunk: int = 64) -> dict:
    """Where the fused content gate's time goes, by its grid: B·H programs (one per sequence
    and head) against the GPU's multiprocessors, each walking T / chunk chunks forward and
    then backward, so ``us_per_chunk`` is the serial time one program spends on one chunk
    (forward + backward)."""
    programs = shape["B"] * shape["H"]
    chunks = -(-shape["T"] // chunk)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return {"programs": programs, "multiprocessors": sms, "busy_multiprocessors_pct": 100.0 * min(1.0, programs / sms),
            "chunks_per_program": chunks, "us_per_chunk": 1e3 * fwd_bwd_ms / chunks}


# ----------------------------------------------------------------------------- cache warm-up
def _cache_dir() -> Path:
    """The folder Triton keeps compiled kernels and autotune choices in, as Triton resolves
    it (``TRITON_CACHE_DIR``, else its default)."""
    import triton

    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    if knobs is not None:
        return Path(knobs.cache.dir)
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def warm_one(shape: str, name: str, who: str) -> None:
    """One untimed forward+backward of one point (run in a worker process)."""
    x = leaf_inputs(shape)
    fn = dict(zip(("ours", "fla"), points(x)[name]))[who]
    if fn is not None:
        o = fn()
        qkv_grads(o, x, torch.randn_like(o))
        torch.cuda.synchronize()


def warm_cache(shapes: list[str], jobs: int, timeout_s: float = 480.0, deadline_s: float | None = None) -> dict:
    """Compile (and provisionally autotune) every point in ``jobs`` parallel processes.

    A unit running longer than ``timeout_s`` is killed; at ``deadline_s`` after the start
    (None: none) the running units are killed and the pending ones not started, so a
    time-limited run ends the warm-up itself and still reports what compiled: each unit's
    line is printed as it ends (rc -9: killed; "not started"). The autotune timings of those
    concurrent processes are unreliable, so their cached choices (``*.autotune.json``) are
    deleted afterwards; compiled binaries stay."""
    units = [(s, n, who) for who in (("fla", "ours") if USE_FLA else ("ours",)) for s in shapes for n in selected(POINTS)
             if who == "ours" or n in FLA_POINTS]
    start, pending, running, report = time.monotonic(), list(units), {}, {}
    while pending or running:
        late = deadline_s is not None and time.monotonic() - start > deadline_s
        while pending and len(running) < jobs and not late:
            unit = pending.pop(0)
            cmd = [sys.executable, "-m", "carvelab.kernels.bench_gpu", "warm", *unit]
            running[unit] = (subprocess.Popen(cmd), time.monotonic())
        for unit, (proc, t0) in list(running.items()):
            if proc.poll() is None and (late or time.monotonic() - t0 > timeout_s):
                proc.kill()
                proc.wait()
            if proc.poll() is not None:
                report["/".join(unit)] = {"rc": proc.returncode, "s": round(time.monotonic() - t0, 1)}
                print(f"warm-up: {'/'.join(unit)} rc {proc.returncode} in {report['/'.join(unit)]['s']} s", flush=True)
                del running[unit]
        if late:
            report.update({"/".join(unit): "not started" for unit in pending})
            pending.clear()
        time.sleep(0.2)
    removed = 0
    for path in _cache_dir().rglob("*.autotune.json"):
        path.unlink()
        removed += 1
    print(f"warm-up: {len(units)} units in {time.monotonic() - start:.0f} s with {jobs} processes; "
          f"{removed} provisional autotune choices dropped; {report}", flush=True)
    return {"seconds": time.monotonic() - start, "jobs": jobs, "units": report, "autotune_choices_dropped": removed}


# ----------------------------------------------------------------------------- profile
def kernel_profile(shape: str, name: str = "gdn2", top: int = 14) -> dict:
    """CUDA time per kernel of one forward+backward (ours and fla), in ms, largest first."""
    from torch.profiler import ProfilerActivity, profile

    x = leaf_inputs(shape)
    out = {}
    for who, fn in zip(("ours", "fla"), points(x)[name]):
        if fn is None:
            continue

        def step():
            o = fn()
            qkv_grads(o, x, torch.ones_like(o))

        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        rows = sorted(((e.key, e.device_time_total / 1e3) for e in prof.key_averages()), key=lambda r: -r[1])
        out[who] = {"total_ms": sum(t for _, t in rows), "kernels_ms": dict(rows[:top])}
    return out


def host_vs_device(fn: Callable[[], object], reps: int = 5) -> dict:
    """Is ``fn`` bound by the host? Median ms the host spends issuing it (from a synchronised
    start to the call's return, before the device has finished) against the device's ms
    (CUDA events). Host time close to device time: launches and Python, not kernels, set the pace."""
    fn()
    torch.cuda.synchronize()
    host, device = [], []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        device.append(start.elapsed_time(end))
    h, d = statistics.median(host), statistics.median(device)
    return {"host_issue_ms": h, "device_ms": d, "host_over_device": h / d}


def host_profile(fn: Callable[[], object], top: int = 20) -> list[str]:
    """The host functions that take longest issuing ``fn`` once (cProfile, own time):
    ``"<own ms> ms <calls>x <function>"``, largest first."""
    import cProfile
    import pstats

    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, prim calls, own s, cum s, callers)
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [f"{own * 1e3:.2f} ms {calls}x {Path(f).name}:{line}({name})" for (f, line, name), (calls, _, own, _, _) in rows]


def content_gate_diagnostics(shape: str) -> dict:
    """Where the content-gate time goes: the GPU memory the first fwd+bwd leaves reserved
    (for the loop: its CUDA-graph pools, captured afresh here; the fused kernels keep
    none), host issue time vs device time of the forward, and the kernels of one fwd+bwd."""
    from carvelab.kernels import cuda_graph

    x = leaf_inputs(shape)
    pts = points(x)
    out = {}
    for name in ("gdn2+content_gate", "gdn2+content_gate_loop"):
        cuda_graph.POOL.clear()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved()
        o = pts[name][0]()
        qkv_grads(o, x, torch.ones_like(o))
        del o
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        out[f"kept_reserved_mb_{name}"] = (torch.cuda.memory_reserved() - reserved) / 2**20
        with torch.no_grad():
            out[f"forward_{name}"] = host_vs_device(pts[name][0])
    with torch.no_grad():
        out["forward_gdn2+content_gate"]["host_profile"] = host_profile(pts["gdn2+content_gate"][0])
    cuda_graph.POOL.clear()
    out["fwd_bwd_profile"] = kernel_profile(shape, "gdn2+content_gate")
    return out


def autotune_choices() -> dict:
    """{kernel: {autotune key: chosen config}} of our autotuned kernels in this process, to
    see which configurations win (and which of the autotune space never does)."""
    from triton.runtime.autotuner import Autotuner

    from carvelab.kernels import triton_chunk, triton_content, triton_covariance, triton_recurrent
    from carvelab.kernels.tuning import TunedKernel

    out = {}
    for module in (triton_chunk, triton_content, triton_recurrent, triton_covariance):
        for name, obj in vars(module).items():
            obj = obj.autotuner if isinstance(obj, TunedKernel) else obj
            if isinstance(obj, Autotuner):
                out[name] = {str(key): str(config) for key, config in getattr(obj, "cache", {}).items()}
    return out


def run_gpu(shapes: list[str], warm_jobs: int = 0, save: Callable[[dict], None] = lambda result: None) -> dict:
    """Every figure of the GPU benchmark; ``save(result)`` after each shape and diagnostic,
    so a run stopped part-way keeps what it measured."""
    import triton

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    try:
        import fla

        result["fla"] = getattr(fla, "__version__", "unknown")
    except ImportError:
        result["fla"] = None
    result["reference_check"] = check_against_reference()
    print(f"reference check: {result['reference_check']}", flush=True)
    if not result["reference_check"]["passed"]:
        result["note"] = "our kernels disagree with the reference: no speed figures are reported"
        return result
    if warm_jobs > 0:
        result["warm_up"] = warm_cache(shapes, warm_jobs)
    result["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
    result["shapes"] = {}
    for shape in shapes:

        def progress(out: dict, shape: str = shape) -> None:
            result["shapes"][shape] = out
            save(result)

        progress(bench_shape(shape, result["copy_bandwidth_gbs"], progress))
    for key, label, fn in (("profile_gdn2_" + shapes[0], "profile", lambda: kernel_profile(shapes[0])),
                           ("content_gate_" + shapes[0], "content_gate", lambda: content_gate_diagnostics(shapes[0])),
                           ("autotune_choices", "autotune", autotune_choices)):
        _diagnostic(result, key, label, fn)
        save(result)
    return result


def _diagnostic(result: dict, key: str, label: str, fn: Callable[[], dict]) -> None:
    """result[key] = fn(), printed; a failing diagnostic is logged as ``<label>_error``, never
    losing the timings already in ``result``."""
    try:
        result[key] = fn()
        print(f"{label}: {json.dumps(result[key])}", flush=True)
    except Exception as exc:
        logger.exception("%s failed", label)
        result[f"{label}_error"] = f"{type(exc).__name__}: {exc}"


def print_table(result: dict) -> None:
    print(f"{result['device']}  torch {result['torch']}  triton {result['triton']}  fla {result['fla']}")
    print(f"reference check (fp32): {result['reference_check']}")
    for shape, res in result.get("shapes", {}).items():
        print(f"\n== {shape} {res['shape']} bf16 ==")
        print(f"{'point':30s} {'ours fwd':>9s} {'ours f+b':>9s} {'fla f+b':>9s} {'ratio':>7s} {'x floor':>8s} {'mem MB':>8s}")
        for name, row in res["points"].items():
            o, f = row.get("ours", {}), row.get("fla", {})
            ratio = row.get("fwd_bwd_ratio_vs_fla", row.get("fwd_bwd_ratio_vs_gdn2_chunk"))
            print(f"{name:30s} {o.get('fwd_ms', float('nan')):9.3f} {o.get('fwd_bwd_ms', float('nan')):9.3f} "
                  f"{f.get('fwd_bwd_ms', float('nan')):9.3f} {ratio if ratio is not None else float('nan'):7.3f} "
                  f"{row.get('ours_x_floor', float('nan')):8.2f} {o.get('peak_extra_mb', float('nan')):8.1f}"
                  + (f"  ERROR {o['error']}" if "error" in o else "") + (f"  fla ERROR {f['error']}" if "error" in f else ""))


def _select(fla: bool, only: tuple) -> None:
    global USE_FLA, SELECTED
    unknown = sorted(set(only) - set(POINTS))
    if unknown:
        raise SystemExit(f"--points: {unknown} are not points; choose from {list(POINTS)}")
    USE_FLA, SELECTED = fla, tuple(only)


def warm_only(shapes: list[str], jobs: int, fla: bool = True, only: tuple = (),
              deadline_s: float | None = None) -> dict:
    _select(fla, only)
    return warm_cache(shapes, jobs, deadline_s=deadline_s)


def main(shapes: list[str], out: str | None, fla: bool = True, warm_jobs: int = 0, only: tuple = ()) -> dict:
    _select(fla, only)
    def save(result: dict) -> None:
        if out:
            with open(out, "w") as fh:
                json.dump(result, fh, indent=2, default=str)

    result = run_gpu(shapes, warm_jobs, save)
    print_table(result)
    save(result)
    return result


if __name__ == "__main__":  # worker of warm_cache: python -m carvelab.kernels.bench_gpu warm SHAPE POINT WHO
    if len(sys.argv) != 5 or sys.argv[1] != "warm":
        raise SystemExit("usage: python -m carvelab.kernels.bench_gpu warm SHAPE POINT WHO")
    warm_one(*sys.argv[2:])
