"""Before/after timing of two code versions on one GPU, one process per version.

    git archive <commit> kernels carve_models search_space trials dashboards | tar -x -C /tmp/old
    # /tmp/ns_old/carvelab -> /tmp/old (a namespace package), likewise /tmp/ns_new for this tree
    for i in 1 2 3; do for v in old new; do
        CARVELAB_AUTOTUNE=0 PYTHONPATH=/tmp/ns_$v python benchmarks/ab_versions.py $v large; done; done

Prints one line ``AB {json}`` per run: GDN-2 (chunked) and GDN-2 + content gate, forward and
forward+backward medians (CUDA events), peak extra memory, and the forward's host issue time
against its device time, with the same helpers as ``python -m carvelab.kernels.bench --gpu``.
Alternate the versions and repeat: the content-gate loop run eagerly is host-bound, and its
time varies by tens of percent between processes of one version.
"""
import json
import os
import sys

import torch

import carvelab.kernels as K
from carvelab.kernels.bench_gpu import cuda_time, host_vs_device, leaf_inputs, peak_extra_mb, points, qkv_grads


def main(label: str, shape: str = "large") -> dict:
    x = leaf_inputs(shape)
    res = {"label": label, "shape": shape, "path": os.path.dirname(K.__file__),
           "autotune": os.environ.get("CARVELAB_AUTOTUNE"), "graphs": os.environ.get("CARVELAB_CUDA_GRAPHS")}
    for name in ("gdn2", "gdn2+content_gate"):
        fn = points(x)[name][0]
        o = fn()
        do = torch.randn(o.shape, generator=torch.Generator(device="cuda").manual_seed(2), device="cuda")
        qkv_grads(fn(), x, do)
        torch.cuda.synchronize()
        reps = 20 if name == "gdn2" else 7
        r = {"fwd_ms": cuda_time(lambda: fn(), reps=reps), "fwd_bwd_ms": cuda_time(lambda: qkv_grads(fn(), x, do), reps=reps)}
        r["peak_extra_mb"] = peak_extra_mb(lambda: qkv_grads(fn(), x, do))
        with torch.no_grad():
            r["fwd_host"] = host_vs_device(fn)
        res[name] = r
    res["content_over_plain"] = res["gdn2+content_gate"]["fwd_bwd_ms"] / res["gdn2"]["fwd_bwd_ms"]
    print("AB " + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python benchmarks/ab_versions.py LABEL [large|small]")
    main(*sys.argv[1:])
