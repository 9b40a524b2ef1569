#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one go, on a machine with one CUDA GPU:
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
# Needs carvelab importable and, for the comparison, flash-linear-attention (fla-core).
# Set TRITON_CACHE_DIR to a persistent folder to reuse compiled kernels between runs.
set -euo pipefail
OUT=${1:-gpu_results}
mkdir -p "$OUT"
python -c "import torch, triton; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" | tee "$OUT/versions.txt"
# 1. correctness: the kernel tests compiled on this GPU (fp32 and bf16 against the reference),
#    one configuration per kernel (autotuning every test shape would compile for ~10 minutes;
#    the autotuned choices are checked against fla on the benchmark inputs in step 2)
CARVELAB_AUTOTUNE=0 TRITON_INTERPRET=0 python -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/kernel_tests.log"
# 2. ours vs fla on the same inputs: compile in parallel first, then time alone
python -m carvelab.kernels.bench --gpu --warm-only --warm-jobs 6 2>&1 | tail -1
python -m carvelab.kernels.bench --gpu --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
# 2b. speed against precision: our 3xTF32 products, one-pass TF32, fla's bf16 (errors vs fp32)
CARVELAB_AUTOTUNE=0 python benchmarks/precision_ab.py large --out "$OUT/precision.json" 2>&1 | tee "$OUT/precision.log"
# 3. compile cost per trial: cold vs warm Triton cache
python -m carvelab.trials.bench_sweep startup gdn2 --out "$OUT/startup.json"
# 4. the GPU quickstart with 0.25 GPU per trial: concurrency and utilisation
python -m carvelab.trials.bench_sweep gpu --out "$OUT/gpu_sweep.json"
# 5. a training step against fla's own models, and the content gate's step cost (carve over gdn2:
#    fused kernels in `graph`, the per-chunk loop in `graph_loop`)
python -m carvelab.trials.bench_step --sizes small,medium,large --models kda,gdn2 --out "$OUT/step.json" 2>&1 | tee "$OUT/step.log"
python -m carvelab.trials.bench_step --sizes small,medium,large --models gdn2,carve --variants graph,graph_loop \
    --no-fla --out "$OUT/step_content.json" 2>&1 | tee "$OUT/step_content.log"
# 6. the chunked cross-entropy (train.ce_chunk) against the whole batch's logits, graphed step
python -m carvelab.trials.bench_step --sizes small,medium,large --models gdn2 --variants graph,graph_ce \
    --no-fla --out "$OUT/step_ce.json" 2>&1 | tee "$OUT/step_ce.log"
# 7. the fused short convolution and norms (kernels/triton_conv.py, triton_norm.py) against torch's ops, then the joint
#    input projections (CARVELAB_JOINT_PROJ, kernels/triton_swiglu.py) and the decay gate
#    (CARVELAB_FUSED_GATES, kernels/triton_gates.py) on top, graphed step
python -m carvelab.trials.bench_step --sizes small,medium,large --models gdn2,kda --variants graph,graph_conv,graph_norm,graph_fused,graph_joint,graph_gates \
    --no-fla --out "$OUT/step_conv.json" 2>&1 | tee "$OUT/step_conv.log"
# 8. trials per hour and aggregate tokens/s of quickstart_gpu's trials sharing the GPU, before vs after
python -m carvelab.trials.bench_aggregate --trials 8 --out "$OUT/aggregate.json" 2>&1 | tee "$OUT/aggregate.log"
# 9. the same trials sharing the GPU with and without an MPS daemon (trials/mps.py; needs nvidia-cuda-mps-control)
python -m carvelab.trials.bench_aggregate --trials 8 --variants after,after_mps --out "$OUT/aggregate_mps.json" 2>&1 | tee "$OUT/aggregate_mps.log"
