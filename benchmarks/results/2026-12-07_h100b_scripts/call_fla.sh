#!/bin/bash
# fla's KDA at small and medium: parallel-compile warm-up (autotune choices dropped after), then one timed bench_step with ours
T0=$(date +%s)
source carry/scripts/setup.sh || exit 1
export TRITON_INTERPRET=0 CARVELAB_AUTOTUNE=0
for s in ${SIZES:-small medium}; do timeout ${WARM_S:-230} python3 carry/scripts/warm_one.py $s kda fla > $OUT/warm_$s.log 2>&1 & done
wait
cat $OUT/warm_*.log | grep -v Warn | tail -6
find $TRITON_CACHE_DIR -name '*.autotune.json' -delete
echo "=== timed t=$(( $(date +%s) - T0 ))"
timeout ${STEP_S:-230} python3 -m carvelab.trials.bench_step --sizes ${SIZES_C:-small,medium} --models kda --variants ${VARIANTS:-graph_fused,graph_all} \
  --out $OUT/step_fla${TAG}.json > $OUT/step_fla${TAG}.log 2>&1
echo "rc=$?"; grep -v '^{' $OUT/step_fla${TAG}.log | tail -20
echo "total $(( $(date +%s) - T0 )) s"
