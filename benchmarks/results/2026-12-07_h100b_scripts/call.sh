#!/bin/bash
# one device call: optional compiled tests, then bench_step specs "TREE:SIZES:MODELS:VARIANTS:FLA:TIMEOUT" one process each
T0=$(date +%s)
source carry/scripts/setup.sh || exit 1
export TRITON_INTERPRET=0 CARVELAB_AUTOTUNE=${AUTOTUNE:-0}
if [ -n "$TESTS" ]; then
  echo "=== tests t=$(( $(date +%s) - T0 ))"
  (cd /tmp/qkv && PYTHONPATH=/tmp/pkg_qkv:/tmp/site timeout ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -15 | tee $OUT/tests.log)
fi
i=0
for spec in $SPECS; do
  IFS=: read tree sizes models variants fla tmo <<< "$spec"
  i=$((i+1))
  pp=/tmp/pkg; [ "$tree" != after ] && pp=/tmp/pkg_$tree
  flag=--fla; [ "$fla" = 0 ] && flag=--no-fla
  echo "=== $spec t=$(( $(date +%s) - T0 ))"
  PYTHONPATH=$pp:/tmp/site timeout ${tmo:-200} python3 -m carvelab.trials.bench_step --sizes $sizes --models $models \
    --variants $variants $flag --out $OUT/step_${i}_${tree}.json > $OUT/step_${i}_${tree}.log 2>&1
  echo "rc=$?"; grep -v '^{' $OUT/step_${i}_${tree}.log | tail -25
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
echo "total $(( $(date +%s) - T0 )) s"
