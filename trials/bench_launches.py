"""How many launches one training step of ours makes in each step variant: counted, not timed,
so it runs anywhere (on a CPU under ``TRITON_INTERPRET=1``) and gives the same numbers on
any machine.

    TRITON_INTERPRET=1 python -m carvelab.trials.bench_launches --sizes small --models kda,gdn2

For each (size, model, variant) it builds ``bench_step``'s model at that size with the
variant's fused pieces on (``bench_step.VARIANT_PIECES``; ``graph`` has none), runs one
forward and backward of the loss under bf16 autocast, and counts

- torch ops: every ATen op that reaches a backend kernel (a ``TorchDispatchMode``), less
  views, reshapes, allocations without a fill, and what Triton's interpreter does inside a
  launch; on a GPU one such op is one kernel launch, a few are two;
- Triton launches: each run of a kernel of ours (after a first, uncounted step, so
  autotuning does not count).

The optimiser step and gradient clipping are left out (on a GPU a few multi-tensor
launches, on a CPU a loop per tensor), and so is ``graph_ce``, whose count depends on the
batch. The others do not depend on the batch or the sequence length, so the step runs one
sequence of ``--tokens`` tokens. On a GPU the profile of ``bench_step`` counts the same
kernels plus the optimiser's; there the difference between variants is the same.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import sys
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from carvelab.trials.bench_step import MODELS, SIZES, VARIANT_PIECES, Size, fused_pieces, our_config

VARIANTS = ("graph",) + tuple(VARIANT_PIECES)
# ATen ops that launch nothing: views, metadata, allocations whose memory is left as it is.
NO_KERNEL = {
    "view", "_unsafe_view", "t", "transpose", "permute", "expand", "slice", "select", "split", "split_with_sizes",
    "unbind", "alias", "detach", "as_strided", "reshape", "_reshape_alias", "squeeze", "unsqueeze", "empty",
    "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "is_same_size", "lift_fresh",
    "_local_scalar_dense", "unflatten", "flatten", "narrow", "view_as", "chunk",
}


class _Counter(TorchDispatchMode):
    """Counts kernel-launching ATen ops by name, outside Triton launches."""

    def __init__(self, in_launch: list):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.in_launch = in_launch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.in_launch and name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_triton(counts: collections.Counter, in_launch: list):
    """Counts each run of a Triton kernel by name (compiled, or interpreted on a CPU)."""
    import triton.runtime.jit as jit

    patched = [(jit.JITFunction, jit.JITFunction.run)]
    try:
        import triton.runtime.interpreter as interpreter

        patched.append((interpreter.InterpretedFunction, interpreter.InterpretedFunction.run))
    except ImportError:  # a Triton without the interpreter
        pass

    def wrap(run):
        def counted(self, *args, **kwargs):
            if in_launch:  # a launch inside a launch (an autotuner's) is one
                return run(self, *args, **kwargs)
            counts[getattr(self, "__name__", None) or self.fn.__name__] += 1
            in_launch.append(True)
            try:
                return run(self, *args, **kwargs)
            finally:
                in_launch.pop()
        return counted

    for cls, run in patched:
        cls.run = wrap(run)
    try:
        yield
    finally:
        for cls, run in patched:
            cls.run = run


def count_step(model: str, size: Size, variant: str, vocab: int, tokens: int, device: str = "cpu") -> dict:
    """{"torch_ops", "triton_launches", "total", "by_op", "by_kernel"} of one forward and backward."""
    from carvelab.carve_models.lm import HybridLM
    from carvelab.trials.lm_loss import compute_loss

    cfg = dataclasses.replace(our_config(model, size, vocab), backend="triton", precision="fast")
    torch.manual_seed(0)
    net = HybridLM(cfg).to(device)
    x = torch.randint(0, vocab, (1, tokens), device=device)

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = compute_loss(net, x, x)
        loss.backward()
        net.zero_grad(set_to_none=True)

    with fused_pieces(variant):
        step()  # compiles (and autotunes) outside the count
        kernels: collections.Counter = collections.Counter()
        in_launch: list = []
        with _count_triton(kernels, in_launch), _Counter(in_launch) as mode:
            step()
    ops = sum(mode.ops.values())
    launches = sum(kernels.values())
    return {"torch_ops": ops, "triton_launches": launches, "total": ops + launches,
            "by_op": dict(mode.ops.most_common()), "by_kernel": dict(kernels.most_common())}


def run(args, save=lambda result: None) -> dict:
    """Every (size, model, variant) of ``args``; ``save(result)`` after each row."""
    rows: list = []
    result = {"torch": torch.__version__, "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
              "tokens": args.tokens, "vocab": args.vocab, "rows": rows}
    for size_name in args.sizes:
        size = SIZES[size_name]
        for model in args.models:
            for variant in args.variants:
                row = {"size": size_name, "model": model, "variant": variant}
                row.update(count_step(model, size, variant, args.vocab, args.tokens, args.device))
                rows.append(row)
                save(result)
                print(f"{size_name:7s} {model:5s} {variant:12s} torch ops {row['torch_ops']:5d}   "
                      f"Triton launches {row['triton_launches']:4d}   total {row['total']:5d}", flush=True)
    return result


def print_table(result: dict) -> None:
    base = {(r["size"], r["model"]): r["total"] for r in result["rows"] if r["variant"] == "graph"}
    print("\n| size | model | variant | torch ops | Triton launches | total | × graph |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        b = base.get((r["size"], r["model"]))
        ratio = f"{r['total'] / b:.2f}" if b else ""
        print(f"| {r['size']} | {r['model']} | {r['variant']} | {r['torch_ops']} | {r['triton_launches']} | "
              f"{r['total']} | {ratio} |")


def _names(text: str, allowed, what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"--{what}: {bad or text!r} not allowed; choose from {list(allowed)}")
    return names


def parse_args(argv: Optional[list] = None):
    p = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_launches", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="small", help=f"comma-separated of {list(SIZES)}")
    p.add_argument("--models", default="kda,gdn2", help=f"comma-separated of {list(MODELS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {list(VARIANTS)}")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--tokens", type=int, default=64, help="one sequence of this many tokens")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the raw JSON here")
    args = p.parse_args(argv)
    args.sizes = _names(args.sizes, SIZES, "sizes")
    args.models = _names(args.models, MODELS, "models")
    args.variants = _names(args.variants, VARIANTS, "variants")
    return args


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("on a CPU the Triton kernels need TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    def save(result: dict) -> None:
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)

    print_table(run(args, save))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
