#!/bin/bash
# call A: chunked cross-entropy before/after in one run (gdn2, graph vs graph_ce), then the MAD suite until the deadline
T0=$(date +%s); DEADLINE=${1:-570}
left() { echo $((T0 + DEADLINE - $(date +%s))); }
source carry/scripts/setup.sh || exit 1
export CARVELAB_AUTOTUNE=0 TRITON_INTERPRET=0
if [ -z "$SKIP_STEP" ]; then
echo "=== step bench t=$(( $(date +%s) - T0 ))"
timeout 240 python3 -m carvelab.trials.bench_step --sizes small,medium,large --models gdn2 --variants graph,graph_ce --no-fla \
  --out $OUT/step_ce.json 2>&1 | tee $OUT/step_ce.log | tail -30
fi
if [ -z "$SKIP_AGG" ]; then
echo "=== aggregate t=$(( $(date +%s) - T0 ))"
timeout 260 python3 -m carvelab.trials.bench_aggregate --trials 8 --out $OUT/aggregate.json 2>&1 | tee $OUT/aggregate.log | tail -12
fi
for s in ${STUDIES:-mad_suite_gpu}; do
  l=$(left); [ $l -lt 40 ] && break
  echo "=== $s t=$(( $(date +%s) - T0 )), $l s left"
  cp carry/studies/$s.jsonl $OUT/$s.jsonl 2>/dev/null
  timeout $((l - 15)) python3 -m carvelab.trials.bench_claims run $s --out $OUT/$s.jsonl --workers ${WORKERS:-14} 2>&1 | tail -4
  echo "$s: $(wc -l < $OUT/$s.jsonl) rows"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
echo "total $(( $(date +%s) - T0 )) s"
