"""A training step of carvelab's model against flash-linear-attention's own models (GPU).

    python -m carvelab.trials.bench_step --out step.json                 # every size and model
    python -m carvelab.trials.bench_step --sizes small --models kda      # one row

Same width, depth, heads, head dims, MLP width, vocabulary and batch shape on both sides;
bf16 autocast, AdamW (fused on both), gradient clipping at 1.0, random tokens. fla's
models are built as fla ships them (fused norms, SwiGLU and cross-entropy, its kernels
autotuned): ``KDAForCausalLM``, ``GatedDeltaNetForCausalLM``, and for GDN-2, which fla has
as a layer (``fla.layers.GatedDeltaNet2``) but not as a model, ``KDAForCausalLM`` with
every layer's mixer replaced by that layer.

Our step is timed in variants, all in the same process, so each change is measured
against the one before it in one run:

    before   precision exact (3xTF32 / fp32 products), AdamW per tensor, and the
             synchronisations the trial loop used to make every step (timer, loss read)
    fast     precision fast (bf16 tensor-core products, TF32 solve), otherwise as before
    after    fast, fused AdamW, no per-step synchronisation
    graph    after, with the whole step replayed from one CUDA graph (trials/step_graph.py);
             in it and every variant above it the short convolutions and norms run on torch ops
    graph_loop  graph, with the content gate on its per-chunk loop instead of its fused
             kernels (CARVELAB_FUSED_CONTENT=0); the same as graph without a content gate
    graph_ce graph, with the loss chunked through the LM head (``train.ce_chunk`` =
             CE_CHUNK tokens, trials/lm_loss.py) instead of the whole batch's fp32 logits
    graph_conv  graph, with the short convolutions (and q, k's l2norm) on the fused Triton
             kernels (``CARVELAB_FUSED_CONV``, kernels/triton_conv.py)
    graph_norm  graph, with the RMSNorms and the mixer's gated RMSNorm on the fused Triton
             kernels (``CARVELAB_FUSED_NORM``, kernels/triton_norm.py)
    graph_fused graph, with both: the short convolutions and the norms fused; the trial
             loop as it is now on a GPU (both switches are on by default)
    graph_joint graph_fused, with the joint input projections (``CARVELAB_JOINT_PROJ=1``: q, k,
             v, z as one matmul, the MLP's gate and up as one with the fused SwiGLU)
    graph_gates graph_joint, with the decay gates on their Triton kernels
             (``CARVELAB_FUSED_GATES=1``, kernels/triton_gates.py)
    graph_xent  graph_fused, with the loss on the fused Triton cross-entropy
             (``CARVELAB_FUSED_CE=1``, kernels/triton_ce.py)
    graph_all   every fused piece: graph_gates with the fused cross-entropy and the
             projection weights cast at once (``CARVELAB_CAST_ONCE=1``, kernels/weight_cast.py)

``carve`` (GDN-2 with CARVE's content gate) has no fla model; its rows carry ``x_gdn2``,
the step time over gdn2's in the same variant (the content gate's throughput cost).

Each row: the median ms/step over ``--steps`` steps after ``--warmup`` (CUDA events),
tokens/s, MFU, GPU busy % and kernels per step (torch.profiler over ``--profile-steps``
steps: kernel time summed over the wall time of those steps, which also holds the
profiler's own cost; ``gpu_busy_timed_pct``, "busy%t": that kernel time per step over the
timed median, the GPU's share of an unprofiled step), where that kernel time goes
(``kernel_ms_by_group``: matmuls, our recurrence kernels, fla's Triton kernels, norms,
optimizer, ...; ``top_kernels``: the 15 costliest by name), peak memory. MFU counts
3 × the forward FLOPs of our model config (``carve_models.costs.flops_per_token``: every
linear map incl. the LM head, the short convolutions, the recurrence's chunked products)
for both sides, against the GPU's dense bf16 peak (989 TFLOP/s on an H100/H200 SXM).
flash-linear-attention is a benchmark-only dependency; without it only our rows run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Size:
    d_model: int
    n_layers: int
    seq_len: int
    batch: int
    head_dim: int

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim


SIZES = {
    "small": Size(128, 2, 128, 64, 64),
    "medium": Size(512, 4, 512, 64, 64),
    "large": Size(1024, 8, 2048, 8, 128),
}
MODELS = ("kda", "gdn", "gdn2", "carve")
FLA_MODELS = ("kda", "gdn", "gdn2")  # fla has no CARVE: carve rows are ours only, compared with gdn2's
VARIANTS = ("before", "fast", "after", "graph", "graph_loop", "graph_ce", "graph_conv", "graph_norm", "graph_fused",
            "graph_joint", "graph_gates", "graph_xent", "graph_all")
# The fused model pieces (kernels/fused.py's PIECES) each variant runs; every other piece, and every
# piece in the variants not named, on torch ops.
VARIANT_PIECES = {
    "graph_conv": ("conv",), "graph_norm": ("norm",), "graph_fused": ("conv", "norm"),
    "graph_joint": ("conv", "norm", "joint"), "graph_gates": ("conv", "norm", "joint", "gates"),
    "graph_xent": ("conv", "norm", "ce"), "graph_all": ("conv", "norm", "joint", "gates", "ce", "cast"),
}
CE_CHUNK = 4096  # tokens per piece of the chunked cross-entropy in graph_ce
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense, SXM


def our_config(model: str, size: Size, vocab: int):
    from carvelab.carve_models.presets import preset_config

    return preset_config(model, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads,
                         vocab_size=vocab, hybrid_ratio="1:0", tie_embeddings=False, chunk_size=64)


def our_model(model: str, size: Size, vocab: int, precision: str):
    import dataclasses

    from carvelab.carve_models.lm import HybridLM

    cfg = dataclasses.replace(our_config(model, size, vocab), backend="triton", precision=precision)
    return HybridLM(cfg).cuda(), cfg


def fla_model(model: str, size: Size, vocab: int, mlp_width: int):
    """fla's own model of ``model`` at ``size`` (see the module docstring)."""
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, KDAConfig, KDAForCausalLM

    common = dict(hidden_size=size.d_model, num_hidden_layers=size.n_layers, num_heads=size.n_heads,
                  head_dim=size.head_dim, expand_v=1, vocab_size=vocab, intermediate_size=mlp_width,
                  tie_word_embeddings=False, use_cache=False)
    if model == "gdn":
        return GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**common)).cuda()
    net = KDAForCausalLM(KDAConfig(**common))
    if model == "gdn2":
        from fla.layers import GatedDeltaNet2

        for i, layer in enumerate(net.model.layers):
            layer.attn = GatedDeltaNet2(hidden_size=size.d_model, expand_v=1, head_dim=size.head_dim,
                                        num_heads=size.n_heads, layer_idx=i)
    return net.cuda()


def make_step(model, optimizer, loss_fn: Callable, x, y, sync_every_step: bool) -> Callable[[], None]:
    """One training step as the trial loop runs it: bf16 autocast, clip at 1.0, AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        if sync_every_step:
            torch.cuda.synchronize()  # the timer's start
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        if sync_every_step:
            torch.cuda.synchronize()  # the timer's stop
            float(loss.detach())      # the loss read for the divergence check
    return step


def _ours_loss(model, x, y):
    from carvelab.trials.lm_loss import compute_loss

    return compute_loss(model, x, y)


def _fla_fused_loss(model, x, y):
    return model(input_ids=x, labels=y).loss


def fused_pieces(variant: str) -> contextlib.ExitStack:
    """A context in which exactly the fused pieces of ``variant`` (``VARIANT_PIECES``) are on."""
    from carvelab.kernels.fused import PIECES

    on = VARIANT_PIECES.get(variant, ())
    stack = contextlib.ExitStack()
    for name, piece in PIECES.items():
        stack.enter_context(piece.override(name in on))
    return stack


def time_step(step: Callable[[], None], warmup: int, steps: int) -> list[float]:
    """ms per step: CUDA events around each of ``steps`` steps, after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def profile_step(step: Callable[[], None], steps: int) -> dict:
    """GPU busy % (kernel time / wall time) and kernels per step over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    kernels, busy_us, per_name = 0, 0.0, []
    for ev in prof.key_averages():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.self_device_time_total > 0:
            kernels += ev.count
            busy_us += ev.self_device_time_total
            per_name.append((ev.key, ev.self_device_time_total / steps / 1e3, ev.count / steps))
    return {"gpu_busy_pct": 100.0 * busy_us / wall_us, "kernels_per_step": kernels / steps,
            "kernel_ms_per_step": busy_us / steps / 1e3, **kernel_breakdown(per_name)}


KERNEL_GROUPS = (  # (group, pattern on the kernel's name): the first that matches names its group
    ("conv / norm (ours)", r"^_(conv|norm)_[a-z0-9_]*kernel"),  # kernels/triton_conv.py, triton_norm.py
    ("gates / swiglu / loss (ours)", r"^_(decay|swiglu|ce)_(fwd|bwd)_kernel"),  # triton_gates, _swiglu, _ce.py
    ("recurrence (ours)", r"^_[a-z0-9_]+_kernel"),  # carvelab's Triton kernels are all named _..._kernel
    ("matmul", r"gemm|nvjet|xmma|cutlass|gemv|splitK|cublas"),
    ("optimizer", r"multi_tensor|[Aa]dam"),
    ("cross-entropy / softmax", r"[Ss]oft[Mm]ax|nll_loss|cross_entropy"),
    ("norm", r"norm|[Mm]oments"),
    ("convolution", r"conv"),
    ("triton (fla)", r"^[A-Za-z_]\w*$"),  # other plain-named (Triton) kernels: fla's recurrence among them
    ("elementwise / reduction / copy", r"elementwise|reduce|[Cc]opy|[Cc]at|fill|index|scatter|gather"),
)


def kernel_group(name: str) -> str:
    """The group of one CUDA kernel by its name (``KERNEL_GROUPS``), ``other`` if none."""
    return next((group for group, pattern in KERNEL_GROUPS if re.search(pattern, name)), "other")


def kernel_breakdown(per_name: list, top: int = 15) -> dict:
    """Kernel time per step by group and the ``top`` kernels by time, from (name, ms/step,
    calls/step) triples: where a step's GPU time goes."""
    groups: dict = {}
    for name, ms, _ in per_name:
        groups[kernel_group(name)] = groups.get(kernel_group(name), 0.0) + ms
    ranked = sorted(per_name, key=lambda t: -t[1])[:top]
    return {"kernel_ms_by_group": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:120], "group": kernel_group(n), "ms_per_step": ms, "calls_per_step": c}
                            for n, ms, c in ranked]}


def peak_flops() -> Optional[float]:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_row(size_name: str, model: str, who: str, args) -> dict:
    """Build, warm up, time and profile one (size, model, side/variant)."""
    from carvelab.carve_models import costs
    from carvelab.trials.training import make_optimizer
    from carvelab.search_space.trial_config import TrainConfig

    size = SIZES[size_name]
    cfg = our_config(model, size, args.vocab)
    torch.manual_seed(0)
    x = torch.randint(0, args.vocab, (size.batch, size.seq_len), device="cuda")
    y = torch.randint(0, args.vocab, (size.batch, size.seq_len), device="cuda")
    train = TrainConfig(lr=1e-3, weight_decay=0.1)
    if who == "fla":
        net = fla_model(model, size, args.vocab, cfg.mlp_width)
        optimizer = make_optimizer(net, train, fused=True)
        step = make_step(net, optimizer, _fla_fused_loss, x, y, sync_every_step=False)
    elif who.startswith("ours:graph"):
        from carvelab.kernels.triton_ops import fused_content
        from carvelab.trials.step_graph import GraphedStep

        net, cfg = our_model(model, size, args.vocab, "fast")
        optimizer = make_optimizer(net, train, capturable=True)
        graphed = GraphedStep(net, optimizer, 1.0, torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False),
                              CE_CHUNK if who == "ours:graph_ce" else 0)
        fused = who != "ours:graph_loop"

        def step():  # the switches are read when the step is captured (the first call)
            with fused_content(fused), fused_pieces(who.removeprefix("ours:")):
                graphed(x, y)
    else:
        net, cfg = our_model(model, size, args.vocab, "exact" if who == "ours:before" else "fast")
        fused = who == "ours:after"
        optimizer = make_optimizer(net, train, fused=fused)
        eager = make_step(net, optimizer, _ours_loss, x, y, sync_every_step=not fused)

        def step():  # the convolutions, norms, projections and gates on torch ops
            with fused_pieces(who.removeprefix("ours:")):
                eager()
    torch.cuda.reset_peak_memory_stats()
    ms = time_step(step, args.warmup, args.steps)
    median = statistics.median(ms)
    tokens = size.batch * size.seq_len
    flops = 3 * costs.flops_per_token(cfg, size.seq_len) * tokens
    peak = peak_flops()
    row = {
        "size": size_name, "model": model, "who": who, "ms_per_step": median,
        "ms_p10": sorted(ms)[len(ms) // 10], "ms_p90": sorted(ms)[(9 * len(ms)) // 10],
        "tokens_per_s": tokens / (median / 1e3), "step_flops": flops,
        "mfu": None if peak is None else flops / (median / 1e3) / peak,
        "params": sum(p.numel() for p in net.parameters()),
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
    }
    row.update(profile_step(step, args.profile_steps))
    # the profiled steps' wall time carries the profiler's own cost (a large share of a
    # 2-ms step); their kernel time over the timed steps' median shows the GPU's share alone
    row["gpu_busy_timed_pct"] = 100.0 * row["kernel_ms_per_step"] / median
    del net, optimizer, step
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    return row


def run(args, save: Callable[[dict], None] = lambda result: None) -> dict:
    """Every (size, model, side) row; ``save(result)`` after each model of a size, so a run
    stopped part-way keeps the rows it measured."""
    import triton

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "fla": _fla_version(), "size_defs": {k: asdict(v) for k, v in SIZES.items()},
              "vocab": args.vocab, "rows": []}
    sides = [f"ours:{v}" for v in args.variants] + (["fla"] if result["fla"] and args.fla else [])
    for size_name in args.sizes:
        by_model = {}
        for model in args.models:
            rows = {}
            for who in sides:
                if who == "fla" and model not in FLA_MODELS:
                    continue
                try:
                    rows[who] = bench_row(size_name, model, who, args)
                except Exception as exc:  # one failing row must not hide the others
                    logger.exception("%s %s %s failed", size_name, model, who)
                    rows[who] = {"size": size_name, "model": model, "who": who,
                                 "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    torch.cuda.empty_cache()
                print(json.dumps(rows[who]), flush=True)
            _ratios(rows)
            by_model[model] = rows
            result["rows"].extend(rows.values())
            _content_cost(by_model)
            save(result)
    return result


def _content_cost(by_model: dict) -> None:
    """carve's step time as a multiple of gdn2's in the same variant (``x_gdn2``)."""
    for who, row in by_model.get("carve", {}).items():
        base = by_model.get("gdn2", {}).get(who, {}).get("ms_per_step")
        if base and "ms_per_step" in row:
            row["x_gdn2"] = row["ms_per_step"] / base


def _ratios(rows: dict) -> None:
    """Each of our variants' step time as a multiple of fla's and of our ``before``, and each
    ``graph_*`` variant's of ``graph``'s (``x_graph``: the chunked cross-entropy's, the fused
    pieces' or the content gate's per-chunk loop's own effect)."""
    fla = rows.get("fla", {}).get("ms_per_step")
    before = rows.get("ours:before", {}).get("ms_per_step")
    graph = rows.get("ours:graph", {}).get("ms_per_step")
    for who, row in rows.items():
        if who.startswith("ours") and "ms_per_step" in row:
            if fla:
                row["x_fla"] = row["ms_per_step"] / fla
            if before:
                row["x_before"] = row["ms_per_step"] / before
            if graph and who.startswith("ours:graph_"):
                row["x_graph"] = row["ms_per_step"] / graph
                if "peak_mem_mb" in row and "peak_mem_mb" in rows["ours:graph"]:
                    row["peak_mem_x_graph"] = row["peak_mem_mb"] / rows["ours:graph"]["peak_mem_mb"]


def _fla_version() -> Optional[str]:
    try:
        import fla
    except ImportError:
        return None
    return getattr(fla, "__version__", "unknown")


def print_table(result: dict) -> None:
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}  fla {result['fla']}")
    print(f"{'size':7s} {'model':5s} {'who':16s} {'ms/step':>8s} {'x fla':>6s} {'x before':>8s} {'x gdn2':>6s} {'x graph':>7s} "
          f"{'tok/s':>10s} {'MFU%':>6s} {'busy%':>6s} {'busy%t':>6s} {'kern/step':>9s} {'mem MB':>8s}")
    nan = float("nan")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['size']:7s} {r['model']:5s} {r['who']:16s} ERROR {r['error']}")
            continue
        print(f"{r['size']:7s} {r['model']:5s} {r['who']:16s} {r['ms_per_step']:8.2f} {r.get('x_fla', nan):6.2f} "
              f"{r.get('x_before', nan):8.2f} {r.get('x_gdn2', nan):6.2f} {r.get('x_graph', nan):7.2f} "
              f"{r['tokens_per_s']:10.0f} "
              f"{100 * (r['mfu'] or nan):6.2f} {r['gpu_busy_pct']:6.1f} {r.get('gpu_busy_timed_pct', nan):6.1f} "
              f"{r['kernels_per_step']:9.0f} "
              f"{r['peak_mem_mb']:8.0f}")
    print("\nkernel ms/step by group (torch.profiler):")
    for r in result["rows"]:
        if "kernel_ms_by_group" in r:
            groups = ", ".join(f"{g} {ms:.2f}" for g, ms in r["kernel_ms_by_group"].items())
            print(f"{r['size']:7s} {r['model']:5s} {r['who']:16s} {groups}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m carvelab.trials.bench_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small,medium,large", help=f"comma-separated of {list(SIZES)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated of {list(MODELS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"our step variants, of {list(VARIANTS)}")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--fla", action=argparse.BooleanOptionalAction, default=True,
                   help="time fla's models too (when flash-linear-attention is importable)")
    p.add_argument("--out", help="write the raw JSON here")
    args = p.parse_args(argv)
    for name, allowed in (("sizes", SIZES), ("models", MODELS), ("variants", VARIANTS)):
        values = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{name}: {bad or values} not allowed; choose from {list(allowed)}")
        setattr(args, name, values)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_step times GPU training steps; no CUDA device is available")
    logging.basicConfig(level=logging.WARNING)

    def save(result: dict) -> None:
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2)

    result = run(args, save)
    print_table(result)
    save(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
