"""Speed against accuracy of the tensor-core product precision, on one GPU, in one run.

    CARVELAB_AUTOTUNE=0 python benchmarks/precision_ab.py [large|small] [--no-fla] [--out FILE]

Our chunked kernels multiply bf16 inputs with 3xTF32 products (``dot_precision``), which
keeps them within the CPU tests' fp32-level error budgets; flash-linear-attention's
``chunk_gdn2`` multiplies in bf16. This times GDN-2 forward+backward on the benchmark's
inputs with our kernels as shipped (``tf32x3``), with our kernels switched to one-pass TF32
products for this run only (``tf32``), and with fla, and measures each one's error against
the torch chunked path in fp32 (TF32 off): max|a - b| / max|b| for o and the gradients of
q, k, v (bf16 tensors in every run) and of g, b, w (fp32). Prints one line per variant and
a summary; ``--out`` keeps the JSON.
"""
import argparse
import json

import torch

import carvelab.kernels.triton_chunk as _chunk
from carvelab.kernels.bench_gpu import SHAPES, _fla, cuda_time, leaf_inputs, peak_extra_mb, qkv_grads, rel_err
from carvelab.kernels.chunk import chunk_gated_delta
from carvelab.kernels.triton_ops import triton_chunk_gated_delta

NAMES = ("q", "k", "v", "g", "b", "w")


def _grads(o, x, do):
    return torch.autograd.grad(o, [x[n] for n in NAMES], do)


def reference(x: dict, do: torch.Tensor) -> list:
    """o and every gradient from the torch chunked path in fp32, TF32 off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    xr = {n: x[n].detach().float().requires_grad_() for n in NAMES}
    o = chunk_gated_delta(*(xr[n] for n in NAMES)).o
    return [o.detach(), *_grads(o, xr, do)]


def measure(label: str, fn, x: dict, do: torch.Tensor, ref: list) -> dict:
    o = fn()
    got = [o.detach(), *_grads(o, x, do)]
    errs = dict(zip(("o", *("d" + n for n in NAMES)), (rel_err(a, b) for a, b in zip(got, ref))))
    row = {
        "variant": label,
        "fwd_ms": cuda_time(lambda: fn()),
        "fwd_bwd_ms": cuda_time(lambda: qkv_grads(fn(), x, do)),
        "peak_extra_mb": peak_extra_mb(lambda: qkv_grads(fn(), x, do)),
        "rel_err": errs,
    }
    print("PREC " + json.dumps(row), flush=True)
    return row


def main(shape: str, fla: bool, out: str | None) -> dict:
    x = leaf_inputs(shape)
    q, k, v, g, b, w = (x[n] for n in NAMES)
    ours = lambda: triton_chunk_gated_delta(q, k, v, g, b, w).o  # noqa: E731
    # o is bf16 in every variant, so autograd rounds its gradient to bf16: round it once here,
    # for the reference too, so that the errors measure the kernels and not that rounding
    do = torch.randn(ours().shape, generator=torch.Generator(device="cuda").manual_seed(2), device="cuda")
    do = do.to(torch.bfloat16).float()
    ref = reference(x, do)
    rows = [measure("ours_tf32x3", ours, x, do, ref)]
    shipped = _chunk.dot_precision
    _chunk.dot_precision = lambda *t: "ieee" if shipped(*t) == "ieee" else "tf32"
    try:
        rows.append(measure("ours_tf32", ours, x, do, ref))
    finally:
        _chunk.dot_precision = shipped
    lib = _fla() if fla else None
    if lib is not None:
        rows.append(measure("fla_bf16", lambda: lib["gdn2"](q, k, v, g, b.to(q.dtype), w.to(q.dtype))[0], x, do, ref))
    base = rows[0]["fwd_bwd_ms"]
    res = {"device": torch.cuda.get_device_name(), "shape": SHAPES[shape], "rows": rows,
           "fwd_bwd_over_tf32x3": {r["variant"]: r["fwd_bwd_ms"] / base for r in rows}}
    print("SUMMARY " + json.dumps(res["fwd_bwd_over_tf32x3"]), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", nargs="?", default="large", choices=sorted(SHAPES))
    p.add_argument("--no-fla", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    main(a.shape, not a.no_fla, a.out)
