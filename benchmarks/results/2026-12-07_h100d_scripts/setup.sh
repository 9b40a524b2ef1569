# install the carried wheels, link the tree as the carvelab package, record versions
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg/carvelab
for d in kernels carve_models search_space trials dashboards; do ln -sfn $PWD/$d /tmp/pkg/carvelab/$d; done
[ -e /tmp/pkg/carvelab/__init__.py ] || cp __init__.py /tmp/pkg/carvelab/ 2>/dev/null
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache CARVELAB_AUTOTUNE=0 TRITON_INTERPRET=0
mkdir -p $TRITON_CACHE_DIR
{ cat carry/scripts/commit.txt; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python3 -c "import sys,torch,triton,fla,omegaconf,optuna; print('python',sys.version.split()[0],'torch',torch.__version__,'cuda',torch.version.cuda,'triton',triton.__version__,'fla',fla.__version__,'omegaconf',omegaconf.__version__,'optuna',optuna.__version__, torch.cuda.get_device_name())";
  nproc; uname -r; } > $OUT/versions.txt 2>&1
cat $OUT/versions.txt
