#!/bin/bash
# usage: bash carry/scripts/run.sh DEADLINE_S WARM(0|1) SPEC...   (SPEC = size:model,model)
set -o pipefail
T0=$(date +%s); DEADLINE=$1; WARM=$2; shift 2
left() { echo $((T0 + DEADLINE - $(date +%s))); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site carry/whl/*.whl || exit 1
mkdir -p /tmp/pkg/carvelab; for p in kernels carve_models search_space trials dashboards; do ln -sfn $PWD/$p /tmp/pkg/carvelab/$p; done
export PYTHONPATH=/tmp/pkg:/tmp/site TRITON_CACHE_DIR=/tmp/triton_cache PYTHONUNBUFFERED=1
mkdir -p $TRITON_CACHE_DIR
if [ -z "$(ls -A $TRITON_CACHE_DIR)" ] && ls carry/tcache/tcache.tgz.* >/dev/null 2>&1; then
  cat carry/tcache/tcache.tgz.* | tar xzf - -C $TRITON_CACHE_DIR && echo "cache restored from tarball"; fi
echo "cache files: $(find $TRITON_CACHE_DIR -type f | wc -l), $(du -sh $TRITON_CACHE_DIR | cut -f1)"
{ cat carry/scripts/commit.txt; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch,triton,fla,transformers,omegaconf; print('torch',torch.__version__,'triton',triton.__version__,'fla',fla.__version__,'transformers',transformers.__version__,'omegaconf',omegaconf.__version__,'cuda',torch.version.cuda,torch.cuda.get_device_name())"
  python3 -m pip list 2>/dev/null | grep -i -E "^(fla-core|flash-linear|einops) "; nproc; uname -r; } > $OUT/versions.txt 2>&1
cat $OUT/versions.txt
python3 -c "import carvelab.trials.bench_step, fla.models; from fla.layers import GatedDeltaNet2; print('imports ok')" || exit 1
if [ "$WARM" = 1 ]; then
  python3 carry/scripts/warm_all.py 12 $(( $(left) - ${TIMED_S:-200} )) "$@" 2>&1 | tee $OUT/log_warm.txt
  tar czf $OUT/warm_logs.tgz -C /tmp warm_logs
fi
for spec in "$@"; do
  size=${spec%%:*}; models=${spec#*:}; l=$(left)
  if [ $l -lt 90 ]; then echo "SKIP $spec: only $l s left"; continue; fi
  echo "=== timed $spec, limit $((l - 45)) s, t=$(( $(date +%s) - T0 )) s"
  timeout $((l - 45)) python3 -m carvelab.trials.bench_step --sizes $size --models $models --out $OUT/step_$size.json 2>&1 | tee $OUT/log_$size.txt
  echo "=== rc $? for $spec at t=$(( $(date +%s) - T0 )) s"
done
sz=$(du -sm $TRITON_CACHE_DIR | cut -f1); echo "cache ${sz} MB, $(find $TRITON_CACHE_DIR -name '*.autotune.json' | wc -l) autotune choices"
if [ $sz -lt 400 ] && [ $(left) -gt 15 ]; then
  mkdir -p $OUT/tc && (cd $TRITON_CACHE_DIR && tar czf - .) | split -b 15M -d - $OUT/tc/tcache.tgz.
  n=$(ls $OUT/tc | wc -l); have=$(find $OUT -type f -not -path "$OUT/tc/*" | wc -l); du -sh $OUT/tc
  [ $((n + have)) -le 8 ] || { echo "cache tarball: $n parts + $have files > 8, dropped"; rm -rf $OUT/tc; }
fi
echo "total $(( $(date +%s) - T0 )) s"
