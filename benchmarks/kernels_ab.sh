#!/usr/bin/env bash
# Our chunked kernels before and after a change, and fla's, timed in one run on one GPU:
#   git archive <base commit> kernels | tar -x -C BASE        # here, where the history is
#   bash benchmarks/kernels_ab.sh BASE [OUT] [SECONDS]
# BASE holds the older kernels/ tree; this checkout is the newer one. Both are imported as
# `carvelab` from namespace folders under $TMPDIR (the rest of the package from this tree).
# Steps, each bounded so a time-limited call ends on its own and keeps what it measured:
#   1. compile both versions' points (and fla's) in parallel processes, at most a third of the time;
#   2. time the new kernels against fla, then the base kernels, one process each (JSON after every point);
#   3. print new/fla, base/fla and new/base per point and shape.
# POINTS and SHAPES (environment) choose what is timed; CARVELAB_AUTOTUNE as set (default: autotuned).
set -uo pipefail
BASE=$(cd "${1:?usage: kernels_ab.sh BASE [OUT] [SECONDS]}" && pwd); OUT=${2:-kernels_ab}; LIMIT=${3:-540}
[ -d "$BASE/kernels" ] || { echo "$BASE has no kernels/ folder"; exit 2; }
mkdir -p "$OUT"; T0=$(date +%s); left() { echo $((LIMIT - ($(date +%s) - T0))); }
P=${POINTS:-'gdn2[fast],kda[fast],gdn2+content_gate[fast]'}; S=${SHAPES:-large,small}
NS=${TMPDIR:-/tmp}/kernels_ab.$$; mkdir -p "$NS/new/carvelab" "$NS/base/carvelab"
for d in kernels carve_models search_space trials dashboards; do ln -sfn "$PWD/$d" "$NS/new/carvelab/$d"; done
for d in carve_models search_space trials dashboards; do ln -sfn "$PWD/$d" "$NS/base/carvelab/$d"; done
ln -sfn "$BASE/kernels" "$NS/base/carvelab/kernels"
run() { local who=$1; shift; PYTHONPATH="$NS/$who${PYTHONPATH:+:$PYTHONPATH}" python -m carvelab.kernels.bench --gpu "$@"; }
W=$((LIMIT / 3))
run new --warm-only --warm-jobs 8 --warm-deadline $W --shapes "$S" --points "$P" > "$OUT/warm_new.log" 2>&1 &
run base --warm-only --no-fla --warm-jobs 4 --warm-deadline $W --shapes "$S" --points "$P" > "$OUT/warm_base.log" 2>&1
wait
grep -h "^warm-up" "$OUT"/warm_*.log
for who in new base; do
  [ "$(left)" -gt 30 ] || { echo "no time left for $who"; break; }
  fla=""; [ $who = base ] && fla=--no-fla
  PYTHONPATH="$NS/$who${PYTHONPATH:+:$PYTHONPATH}" timeout "$(left)" \
    python -m carvelab.kernels.bench --gpu $fla --shapes "$S" --points "$P" --out "$OUT/$who.json" > "$OUT/$who.log" 2>&1
  echo "$who: rc $? at $(( $(date +%s) - T0 )) s"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
res = {w: json.loads(p.read_text()) for w in ("new", "base") if (p := Path(sys.argv[1]) / f"{w}.json").exists()}
def ms(who, shape, point, lib="ours"):
    return res.get(who, {}).get("shapes", {}).get(shape, {}).get("points", {}).get(point, {}).get(lib, {}).get("fwd_bwd_ms")
shapes = sorted({s for r in res.values() for s in r.get("shapes", {})})
points = sorted({p for r in res.values() for s in r.get("shapes", {}).values() for p in s["points"]})
ratio = lambda a, b: f"{a / b:.3f}" if a and b else "-"
print(f"{'shape':6s} {'point':26s} {'new ms':>8s} {'base ms':>8s} {'fla ms':>8s} {'new/fla':>8s} {'base/fla':>8s} {'new/base':>8s}")
for s in shapes:
    for p in points:
        n, b, f = ms("new", s, p), ms("base", s, p), ms("new", s, p, "fla")
        print(f"{s:6s} {p:26s} {n or float('nan'):8.3f} {b or float('nan'):8.3f} {f or float('nan'):8.3f} "
              f"{ratio(n, f):>8s} {ratio(b, f):>8s} {ratio(n, b):>8s}")
PY
rm -rf "$NS"
