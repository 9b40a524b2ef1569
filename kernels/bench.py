"""Kernel benchmark: the torch chunked path against the token-by-token reference.

    python -m carvelab.kernels.bench --device cpu            # B=2 T=1024 H=4 dk=dv=64, ~1 min
    python -m carvelab.kernels.bench --device cpu --small    # B=1 T=128 H=2 dk=dv=16, seconds

For one shape it first checks the chunked path (forward outputs, final state and every
input gradient) against the reference, and refuses to print a speed-up if they disagree.
It then times forward + backward of both in the same run (median of ``--repeats`` after
``--warmup`` untimed runs) and prints the reference / chunked time ratio, and the time of
the content gate on (CARVE) relative to off.

Each ``--device`` is one mode in ``MODES`` with its own function; a GPU mode (Triton
kernels against flash-linear-attention) plugs in there, next to ``bench_cpu``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from carvelab.kernels._args import ContentGate
from carvelab.kernels.chunk import chunk_gated_delta
from carvelab.kernels.options import RecurrenceOptions
from carvelab.kernels.reference import gated_delta_reference

OUT_TOL = 1e-5     # max|a - b| / max|b| on outputs and final state
GRAD_TOL = 1e-4    # the same on every input gradient


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    H: int
    dk: int
    dv: int
    chunk_size: int

    def __str__(self) -> str:
        return f"B={self.B} T={self.T} H={self.H} dk={self.dk} dv={self.dv} chunk={self.chunk_size}"


def make_inputs(shape: Shape, content: bool, seed: int = 0) -> dict:
    """Leaf tensors (requires_grad) of a plausible GDN-2 layer; logits for ``b`` with content."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, dk, dv = shape.B, shape.T, shape.H, shape.dk, shape.dv

    def rand(*size):
        return torch.randn(*size, generator=gen)

    x = dict(
        q=F.normalize(rand(B, T, H, dk), dim=-1), k=F.normalize(rand(B, T, H, dk), dim=-1),
        v=rand(B, T, H, dv), g=-F.softplus(rand(B, T, H, dk) - 3.0),
        b=rand(B, T, H, dk) if content else torch.sigmoid(rand(B, T, H, dk)),
        w=torch.sigmoid(rand(B, T, H, dv)),
    )
    if content:
        x["U"] = 0.1 * rand(H, dk, 4)
        x["V"] = rand(H, 4, dv) / dv ** 0.5
    return {name: t.requires_grad_() for name, t in x.items()}


def call(fn: Callable, x: dict, chunk_size: int):
    """Run ``fn`` on the inputs, return (outputs, loss) with a loss touching o and the state."""
    content = ContentGate(x["U"], x["V"]) if "U" in x else None
    out = fn(x["q"], x["k"], x["v"], x["g"], x["b"], x["w"], None, RecurrenceOptions(chunk_size=chunk_size),
             content=content)
    loss = (out.o * torch.linspace(-1, 1, out.o.shape[-1])).sum() + out.state.square().sum()
    return out, loss


def relative_errors(shape: Shape, content: bool) -> dict:
    """max|chunk - ref| / max|ref| for o, the final state and each input gradient."""
    results = []
    for fn in (chunk_gated_delta, gated_delta_reference):
        x = make_inputs(shape, content)
        out, loss = call(fn, x, shape.chunk_size)
        grads = torch.autograd.grad(loss, list(x.values()))
        results.append({"o": out.o, "state": out.state, **{f"d{n}": g for n, g in zip(x, grads)}})
    fast, ref = results
    return {n: ((fast[n] - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-30)).item() for n in ref}


def check(shape: Shape, content: bool) -> bool:
    errors = relative_errors(shape, content)
    bad = {n: e for n, e in errors.items() if not e <= (OUT_TOL if n in ("o", "state") else GRAD_TOL)}
    worst = max(errors, key=errors.get)
    label = "content gate on" if content else "content gate off"
    print(f"check {label}: worst relative error {errors[worst]:.2e} ({worst}); "
          f"budgets {OUT_TOL:.0e} outputs, {GRAD_TOL:.0e} gradients -> {'ok' if not bad else 'FAILED'}")
    for n, e in bad.items():
        print(f"  {n}: {e:.2e} over budget")
    return not bad


def time_fwd_bwd(fn: Callable, shape: Shape, content: bool, repeats: int, warmup: int) -> float:
    """Median seconds of forward + backward over ``repeats`` runs after ``warmup`` runs."""
    x = make_inputs(shape, content)
    times = []
    for i in range(warmup + repeats):
        for t in x.values():
            t.grad = None
        start = time.perf_counter()
        _, loss = call(fn, x, shape.chunk_size)
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cpu(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = _shape(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {shape}")
    _warn_if_busy()
    if not (check(shape, content=False) and check(shape, content=True)):
        print("the chunked path does not match the reference at this shape: no timings printed")
        return 1
    t_ref = time_fwd_bwd(gated_delta_reference, shape, False, args.repeats, args.warmup)
    t_off = time_fwd_bwd(chunk_gated_delta, shape, False, args.repeats, args.warmup)
    t_on = time_fwd_bwd(chunk_gated_delta, shape, True, args.repeats, args.warmup)
    print(f"forward+backward, median of {args.repeats}:")
    print(f"  reference            {t_ref * 1e3:9.1f} ms")
    print(f"  chunked              {t_off * 1e3:9.1f} ms   reference / chunked = {t_ref / t_off:.1f}x")
    print(f"  chunked, content on  {t_on * 1e3:9.1f} ms   content on / off    = {t_on / t_off:.2f}x")
    return 0


def _warn_if_busy() -> None:
    """Other jobs on the cores distort the timings (threaded ops wait for descheduled threads)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        print(f"warning: load average {load:.1f} on {cores} cores; timings are unreliable "
              "(try again on idle cores, or compare with --threads 1)")


def bench_gpu(args: argparse.Namespace) -> int:
    """Our Triton kernels against flash-linear-attention on the GPU (kernels/bench_gpu.py)."""
    from carvelab.kernels.bench_gpu import main as gpu_main, warm_only

    only = tuple(p for p in args.points.split(",") if p)
    if args.warm_only:
        warm_only(args.shapes.split(","), args.warm_jobs or 1, fla=not args.no_fla, only=only,
                  deadline_s=args.warm_deadline)
        return 0
    result = gpu_main(args.shapes.split(","), args.out, fla=not args.no_fla, warm_jobs=args.warm_jobs, only=only)
    return 0 if result["reference_check"]["passed"] else 1


MODES: dict[str, Callable[[argparse.Namespace], int]] = {"cpu": bench_cpu, "gpu": bench_gpu}

FULL = Shape(B=2, T=1024, H=4, dk=64, dv=64, chunk_size=64)
SMALL = Shape(B=1, T=128, H=2, dk=16, dv=16, chunk_size=32)


def _shape(args: argparse.Namespace) -> Shape:
    base = SMALL if args.small else FULL
    pick = {f: getattr(args, f) for f in ("B", "T", "H", "dk", "dv", "chunk_size")}
    return Shape(**{f: getattr(base, f) if v is None else v for f, v in pick.items()})


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m carvelab.kernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(MODES), default="cpu", help="which comparison to run")
    p.add_argument("--small", action="store_true", help=f"a seconds-long run at {SMALL}")
    for name, flag in (("B", "--batch"), ("T", "--seq-len"), ("H", "--heads"), ("dk", "--dk"),
                       ("dv", "--dv"), ("chunk_size", "--chunk-size")):
        p.add_argument(flag, dest=name, type=int, default=None, help=f"override {name}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--gpu", dest="device", action="store_const", const="gpu", help="same as --device gpu")
    p.add_argument("--shapes", default="large,small", help="gpu: comma-separated shapes (large, small)")
    p.add_argument("--out", default=None, help="gpu: write the figures as JSON here")
    p.add_argument("--no-fla", action="store_true", help="gpu: time our kernels only")
    p.add_argument("--points", default="", help="gpu: comma-separated points to time (default: all)")
    p.add_argument("--warm-jobs", type=int, default=0,
                   help="gpu: compile every point first in this many parallel processes (0: no warm-up)")
    p.add_argument("--warm-only", action="store_true", help="gpu: fill the Triton cache, time nothing")
    p.add_argument("--warm-deadline", type=float, default=None, metavar="S",
                   help="gpu, --warm-only: end the warm-up after S seconds (units still compiling are killed, "
                        "the rest not started; every unit's outcome is printed)")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    return MODES[args.device](args)


if __name__ == "__main__":
    sys.exit(main())
