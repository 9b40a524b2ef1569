#!/bin/bash
# run studies side by side until the deadline: STUDIES="name:workers[:size] ..."; MPS=1 tries the MPS daemon first
T0=$(date +%s); DEADLINE=${1:-560}
source carry/scripts/setup.sh || exit 1
if [ "$MPS" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log; mkdir -p /tmp/mps_pipe /tmp/mps_log
  if which nvidia-cuda-mps-control && nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; x=torch.ones(4,device='cuda'); print('mps probe', x.sum().item())"; then
    echo "MPS on"; else echo "MPS failed"; echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; fi
fi
pids=""
for spec in $STUDIES; do
  IFS=: read s w size <<< "$spec"
  cp carry/studies/$s.jsonl $OUT/$s.jsonl 2>/dev/null
  sz=""; [ -n "$size" ] && sz="--size $size"
  l=$((T0 + DEADLINE - $(date +%s)))
  echo "=== $s ($w workers) t=$(( $(date +%s) - T0 )), $l s left"
  timeout $l python3 -m carvelab.trials.bench_claims run $s $sz --out $OUT/$s.jsonl --workers $w $EXTRA > $OUT/$s.log 2>&1 &
  pids="$pids $!"
done
while sleep 60; do
  alive=0; for p in $pids; do kill -0 $p 2>/dev/null && alive=1; done
  echo "t=$(( $(date +%s) - T0 )) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader) $(for spec in $STUDIES; do s=${spec%%:*}; echo -n "$s=$(wc -l < $OUT/$s.jsonl) "; done)"
  [ $alive = 0 ] && break
done
wait
for spec in $STUDIES; do s=${spec%%:*}; tail -3 $OUT/$s.log; done
[ -n "$CUDA_MPS_PIPE_DIRECTORY" ] && echo quit | nvidia-cuda-mps-control
echo "total $(( $(date +%s) - T0 )) s"
