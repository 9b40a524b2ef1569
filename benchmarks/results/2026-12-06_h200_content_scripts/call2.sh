#!/bin/bash
T0=$(date +%s); DEADLINE=${1:-560}
left() { echo $((T0 + DEADLINE - $(date +%s))); }
source carry/scripts/setup.sh || exit 1
export CARVELAB_AUTOTUNE=0 TRITON_INTERPRET=0
echo "=== kernel bench large fast t=$(( $(date +%s) - T0 ))"
timeout 140 python3 -m carvelab.kernels.bench --gpu --no-fla --shapes large \
  --points 'gdn2[fast],gdn2+content_gate[fast],gdn2+content_gate_loop[fast]' \
  --out $OUT/content_bench_large_fast.json 2>&1 | tee $OUT/content_bench_large_fast.log | tail -12
for s in ${STUDIES:-zoology_mqar_gpu mad_suite_gpu}; do
  l=$(left); [ $l -lt 40 ] && break
  echo "=== $s t=$(( $(date +%s) - T0 )), $l s left"
  cp carry/studies/$s.jsonl $OUT/$s.jsonl 2>/dev/null
  timeout $((l - 15)) python3 -m carvelab.trials.bench_claims run $s --out $OUT/$s.jsonl --workers ${WORKERS:-12} 2>&1 | tail -4
  echo "$s: $(wc -l < $OUT/$s.jsonl) rows"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
echo "total $(( $(date +%s) - T0 )) s"
