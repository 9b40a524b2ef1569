import gc, sys, weakref, tempfile, types
from pathlib import Path
import torch
from carvelab.search_space.loading import load_trial_config
from carvelab.trials import trial as T
from carvelab.trials import step_graph as SG
from carvelab.trials.measure import release_device_memory

tmp = Path(tempfile.mkdtemp())
refs = {}
orig_bm = T.build_model
def bm(*a, **k):
    m, c = orig_bm(*a, **k); refs["model"] = weakref.ref(m); return m, c
T.build_model = bm
orig_init = SG.GraphedStep.__init__
def gi(self, *a, **k):
    orig_init(self, *a, **k); refs["graph_step"] = weakref.ref(self)
SG.GraphedStep.__init__ = gi
orig_mo = T.make_optimizer
def mo(*a, **k):
    o = orig_mo(*a, **k); refs["optimizer"] = weakref.ref(o); return o
T.make_optimizer = mo

def chain(obj, depth=0, seen=None):
    seen = seen if seen is not None else set()
    if depth > 5: return
    for r in gc.get_referrers(obj):
        if id(r) in seen or r is sys._getframe() or isinstance(r, types.FrameType) and depth == 0 and r.f_code.co_name == "chain":
            continue
        if r is refs or isinstance(r, list) and len(r) > 1000: continue
        seen.add(id(r))
        d = repr(r)[:160] if not isinstance(r, dict) else "dict keys=" + str(list(r.keys())[:12])
        print("  " * (depth + 1) + f"<- {type(r).__name__}: {d}")
        if isinstance(r, types.ModuleType): continue
        chain(r, depth + 1, seen)

def cfg_for(preset, d, T_, B, graph):
    return load_trial_config({
        "preset": preset, "model": {"d_model": d, "n_layers": 2, "n_heads": 2, "chunk_size": 64},
        "task": {"name": "mqar", "seq_len": T_, "vocab_size": 256, "num_kv_pairs": 16, "train_examples": 2048,
                 "val_examples": 128, "cache_dir": str(tmp / "cache")},
        "train": {"steps": 20, "batch_size": B, "eval_every": 10, "warmup_steps": 2, "device": "cuda",
                  "dtype": "bfloat16", "timing_steps": 0, "cuda_graph": graph}})

dev = torch.device("cuda")
a = torch.randn(512, 512, device=dev, dtype=torch.bfloat16)
base = torch.cuda.memory_allocated(dev)
for i in range(3):
    st = torch.cuda.Stream()
    with torch.cuda.stream(st):
        a @ a
    torch.cuda.synchronize()
    print(f"after a matmul on new stream {i}: +{(torch.cuda.memory_allocated(dev) - base) / 2**20:.1f} MB", flush=True)
print("clearCublasWorkspaces exists:", hasattr(torch._C, "_cuda_clearCublasWorkspaces"))
print(f"after release_device_memory: +{(release_device_memory(dev) * 2**20 - base) / 2**20:.1f} MB", flush=True)
for preset, graph in (("gdn2", True), ("carve", True), ("carve", False)):
    cfg = cfg_for(preset, 256, 256, 64, graph)
    for i in range(3):
        r = T.run_trial(cfg)
        alive = {k: v() is not None for k, v in refs.items()}
        gc.collect()
        alive_gc = {k: v() is not None for k, v in refs.items()}
        after = release_device_memory(dev)
        print(f"{preset} graph={graph} trial {i}: {r.status} peak={r.metrics.get('peak_mem_mb'):.1f} "
              f"after_release={after:.1f}MB alive={alive} alive_after_gc={alive_gc}", flush=True)
        if i == 1:
            m = refs["model"]()
            if m is not None:
                print(" model referrers:"); chain(m)
            else:
                cuda = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.is_cuda]
                print(f" {len(cuda)} cuda tensors in gc; largest:")
                for t in sorted(cuda, key=lambda t: -t.numel() * t.element_size())[:3]:
                    print("  ", tuple(t.shape), t.dtype, t.requires_grad, type(t).__name__)
                    chain(t)
            if graph:
                g = refs.get("graph_step") and refs["graph_step"]()
                if g is not None:
                    print(" graph_step referrers:"); chain(g)
        del r
        refs.clear()
