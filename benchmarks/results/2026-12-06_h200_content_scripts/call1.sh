#!/bin/bash
# call 1: content-gate kernel tests compiled, kernel bench, step bench; then studies until the deadline
T0=$(date +%s); DEADLINE=${1:-560}
left() { echo $((T0 + DEADLINE - $(date +%s))); }
source carry/scripts/setup.sh || exit 1
export CARVELAB_AUTOTUNE=0 TRITON_INTERPRET=0
python3 -c "from carvelab.trials.bench_tuning import pending_runs; from carvelab.search_space.sweep_loading import load_sweep; from pathlib import Path; print('plan', len(pending_runs(load_sweep('zoology_mqar_gpu'), Path('/tmp/x'))))" || exit 1
echo "=== tests t=$(( $(date +%s) - T0 ))"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_content.py 2>&1 | tail -15 | tee $OUT/content_tests.log
echo "=== kernel bench t=$(( $(date +%s) - T0 ))"
timeout 150 python3 -m carvelab.kernels.bench --gpu --no-fla --shapes small,large \
  --points 'gdn2,gdn2+content_gate,gdn2+content_gate_loop,gdn2[fast],gdn2+content_gate[fast],gdn2+content_gate_loop[fast]' \
  --out $OUT/content_bench.json 2>&1 | tee $OUT/content_bench.log | tail -40
echo "=== step bench t=$(( $(date +%s) - T0 ))"
timeout 150 python3 -m carvelab.trials.bench_step --sizes small,medium --models gdn2,carve --variants graph,graph_loop --no-fla \
  --out $OUT/step_content.json 2>&1 | tee $OUT/step_content.log | tail -30
l=$(left); echo "=== studies t=$(( $(date +%s) - T0 )), $l s left"
for s in ${STUDIES:-zoology_mqar_gpu}; do
  l=$(left); [ $l -lt 40 ] && break
  cp carry/studies/$s.jsonl $OUT/$s.jsonl 2>/dev/null
  timeout $((l - 15)) python3 -m carvelab.trials.bench_claims run $s --out $OUT/$s.jsonl --workers ${WORKERS:-8} 2>&1 | tail -8
  echo "$s: $(wc -l < $OUT/$s.jsonl) rows"
done
echo "total $(( $(date +%s) - T0 )) s"
