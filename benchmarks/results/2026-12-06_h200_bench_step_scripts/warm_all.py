"""Run warm_one.py for every unit in parallel processes, then drop the provisional autotune
choices (*.autotune.json) those concurrent processes cached; compiled binaries stay."""
import os, subprocess, sys, time
from pathlib import Path

jobs, deadline = int(sys.argv[1]), float(sys.argv[2])
plan = sys.argv[3:]  # entries size:model1,model2
units = []
for entry in plan:
    size, models = entry.split(":")
    for m in models.split(","):
        units.append((size, m, "fla"))
for entry in ([] if os.environ.get('FLA_ONLY') else plan):
    size, models = entry.split(":")
    for m in models.split(","):
        units += [(size, m, "ours:graph"), (size, m, "ours:before")]
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
logdir = Path("/tmp/warm_logs"); logdir.mkdir(exist_ok=True)
start, pending, running, report = time.monotonic(), list(units), {}, {}
while pending or running:
    while pending and len(running) < jobs:
        u = pending.pop(0)
        fh = open(logdir / ("_".join(u).replace(":", "-") + ".txt"), "w")
        running[u] = (subprocess.Popen([sys.executable, os.path.dirname(__file__) + "/warm_one.py", *u],
                                       stdout=fh, stderr=subprocess.STDOUT), time.monotonic())
    for u, (p, t0) in list(running.items()):
        if p.poll() is None and time.monotonic() - start > deadline:
            p.kill(); p.wait()
        if p.poll() is not None:
            report["/".join(u)] = (p.returncode, round(time.monotonic() - t0, 1))
            print("done", u, report["/".join(u)], f"t={time.monotonic() - start:.0f}s", flush=True)
            del running[u]
    time.sleep(0.5)
cache = Path(os.environ["TRITON_CACHE_DIR"])
removed = 0
for path in cache.rglob("*.autotune.json"):
    path.unlink(); removed += 1
print(f"warm-up: {len(units)} units in {time.monotonic() - start:.0f} s, {jobs} processes; "
      f"{removed} provisional autotune choices dropped; {report}", flush=True)
