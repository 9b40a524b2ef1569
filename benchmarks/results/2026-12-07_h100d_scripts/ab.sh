#!/bin/bash
# same-run A/B: base kernels (carry/base/kernels, the last commit) vs this tree's, and fla; autotuned
T0=$(date +%s); LIMIT=${1:-575}
source carry/scripts/setup.sh || exit 1
export CARVELAB_AUTOTUNE=1 TRITON_CACHE_DIR=/tmp/triton_cache
mkdir -p /tmp/pkgbase/carvelab
for d in carve_models search_space trials dashboards; do ln -sfn $PWD/$d /tmp/pkgbase/carvelab/$d; done
ln -sfn $PWD/carry/base/kernels /tmp/pkgbase/carvelab/kernels
P=${POINTS:-'gdn2[fast],kda[fast],gdn2+content_gate[fast]'}; S=${SHAPES:-large,small}
left() { echo $((LIMIT - ($(date +%s)-T0))); }
if [ "${SKIPWARM:-0}" != 1 ]; then
  timeout ${WARM:-280} python3 -m carvelab.kernels.bench --gpu --warm-only --warm-jobs 8 --shapes $S --points "$P" 2>&1 | grep -v -i warn | tail -2 &
  PYTHONPATH=/tmp/pkgbase:/tmp/site timeout ${WARM:-280} python3 -m carvelab.kernels.bench --gpu --warm-only --no-fla --warm-jobs 5 --shapes $S --points "$P" 2>&1 | grep -v -i warn | tail -2
  wait
  echo "warm done t=$(( $(date +%s)-T0 ))"
fi
for who in ${ORDER:-new base}; do
  [ $(left) -lt 20 ] && break
  if [ $who = new ]; then PP=/tmp/pkg:/tmp/site; F=""; else PP=/tmp/pkgbase:/tmp/site; F="--no-fla"; fi
  PYTHONPATH=$PP timeout $(left) python3 -m carvelab.kernels.bench --gpu $F --shapes $S --points "$P" --out $OUT/ab_$who.json > $OUT/ab_$who.log 2>&1
  echo "$who rc=$? t=$(( $(date +%s)-T0 ))"; grep -A12 "^== " $OUT/ab_$who.log | cut -c1-200
done
python3 - <<'PY'
import json, os
out = os.environ["OUT"]; r = {}
for who in ("new", "base"):
    try: r[who] = json.load(open(f"{out}/ab_{who}.json"))
    except Exception as e: print(who, "missing", e)
for shape in ("large", "small"):
    for pt in ("gdn2[fast]", "kda[fast]", "gdn2+content_gate[fast]"):
        get = lambda who, k="ours": r.get(who, {}).get("shapes", {}).get(shape, {}).get("points", {}).get(pt, {}).get(k, {}).get("fwd_bwd_ms")
        n, b, f = get("new"), get("base"), get("new", "fla")
        mem = lambda who: r.get(who, {}).get("shapes", {}).get(shape, {}).get("points", {}).get(pt, {}).get("ours", {}).get("peak_extra_mb")
        print(f"{shape:6s} {pt:26s} new {n} base {b} fla {f} | new/fla {n/f if n and f else None} base/fla {b/f if b and f else None} new/base {n/b if n and b else None} | mem new {mem('new')} base {mem('base')}")
PY
