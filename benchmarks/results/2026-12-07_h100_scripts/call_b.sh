#!/bin/bash
# call B: fused conv tests compiled; step bench graph vs graph_conv (gdn2, kda) at three sizes; then studies until the deadline
T0=$(date +%s); DEADLINE=${1:-570}
left() { echo $((T0 + DEADLINE - $(date +%s))); }
source carry/scripts/setup.sh || exit 1
export CARVELAB_AUTOTUNE=0 TRITON_INTERPRET=0
if [ -z "$SKIP_STEP" ]; then
echo "=== conv tests t=$(( $(date +%s) - T0 ))"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_conv.py tests/kernels/test_triton_norm.py 2>&1 | tail -8 | tee $OUT/conv_tests.log
echo "=== step bench t=$(( $(date +%s) - T0 ))"
timeout ${STEP_S:-330} python3 -m carvelab.trials.bench_step --sizes ${SIZES:-small,medium,large} --models ${MODELS:-gdn2} --variants ${VARIANTS:-graph,graph_conv,graph_norm,graph_fused} --no-fla \
  --out $OUT/step_conv.json 2>&1 | tee $OUT/step_conv.log | tail -40
fi
for s in ${STUDIES:-mad_suite_gpu}; do
  l=$(left); [ $l -lt 40 ] && break
  echo "=== $s t=$(( $(date +%s) - T0 )), $l s left"
  cp carry/studies/$s.jsonl $OUT/$s.jsonl 2>/dev/null
  ov="OVR_$s"
  timeout $((l - 15)) python3 -m carvelab.trials.bench_claims run $s --out $OUT/$s.jsonl --workers ${WORKERS:-14} ${!ov} 2>&1 | tail -4
  echo "$s: $(wc -l < $OUT/$s.jsonl) rows"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
echo "total $(( $(date +%s) - T0 )) s"
