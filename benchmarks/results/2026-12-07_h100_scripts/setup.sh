# source carry/scripts/setup.sh : wheels into /tmp/site, the package as /tmp/pkg/carvelab, versions to $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg/carvelab; for p in kernels carve_models search_space trials dashboards; do ln -sfn $PWD/$p /tmp/pkg/carvelab/$p; done
export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache
mkdir -p $TRITON_CACHE_DIR
{ cat carry/scripts/commit.txt; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch,triton,optuna,omegaconf,sys; print('python',sys.version.split()[0],'torch',torch.__version__,'cuda',torch.version.cuda,'triton',triton.__version__,'optuna',optuna.__version__,'omegaconf',omegaconf.__version__,torch.cuda.get_device_name())"
  nproc; uname -r; } > $OUT/versions.txt 2>&1
cat $OUT/versions.txt
