# install the carried wheels, link the tree (and the day's-start tree) as the carvelab package
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg/carvelab /tmp/before /tmp/pkg_before/carvelab
for d in kernels carve_models search_space trials dashboards; do ln -sfn $PWD/$d /tmp/pkg/carvelab/$d; done
if [ ! -d /tmp/before/kernels ]; then tar xzf carry/before.tgz -C /tmp/before || return 1; fi
for d in kernels carve_models search_space trials dashboards; do ln -sfn /tmp/before/$d /tmp/pkg_before/carvelab/$d; done
mkdir -p /tmp/qkv /tmp/pkg_qkv/carvelab
if [ ! -d /tmp/qkv/kernels ]; then tar xzf carry/qkv.tgz -C /tmp/qkv || return 1; fi
for d in kernels carve_models search_space trials dashboards; do ln -sfn /tmp/qkv/$d /tmp/pkg_qkv/carvelab/$d; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache
mkdir -p $TRITON_CACHE_DIR
{ cat carry/scripts/commit.txt; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; 
  python3 -c "import sys,torch,triton,fla,omegaconf; print('python',sys.version.split()[0],'torch',torch.__version__,'cuda',torch.version.cuda,'triton',triton.__version__,'fla',fla.__version__,'omegaconf',omegaconf.__version__, torch.cuda.get_device_name())"; 
  python3 -c "import transformers,einops; print('transformers',transformers.__version__,'einops',einops.__version__)"; nproc; uname -r; } > $OUT/versions.txt 2>&1
cat $OUT/versions.txt
