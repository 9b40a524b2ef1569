#!/bin/bash
# short call: compiled kernel tests beside an untuned new-vs-base timing (no fla) at the small shape
T0=$(date +%s); LIMIT=${1:-200}
source carry/scripts/setup.sh >/dev/null || exit 1
cat $OUT/versions.txt
left() { echo $((LIMIT - ($(date +%s)-T0))); }
( timeout ${KT:-170} python3 -m pytest -q -p no:cacheprovider -rfEs tests/kernels/test_triton_chunk.py tests/kernels/test_triton_content.py > $OUT/kernel_tests.log 2>&1; echo "kernel tests rc=$? t=$(( $(date +%s)-T0 ))" >> $OUT/kernel_tests.log ) &
mkdir -p /tmp/pkgbase/carvelab
for d in carve_models search_space trials dashboards; do ln -sfn $PWD/$d /tmp/pkgbase/carvelab/$d; done
ln -sfn $PWD/carry/base/kernels /tmp/pkgbase/carvelab/kernels
P='gdn2[fast],kda[fast],gdn2+content_gate[fast]'; S=${SHAPES:-small}
python3 -m carvelab.kernels.bench --gpu --warm-only --no-fla --warm-jobs 4 --warm-deadline 70 --shapes $S --points "$P" 2>&1 | grep "^warm" &
PYTHONPATH=/tmp/pkgbase:/tmp/site python3 -m carvelab.kernels.bench --gpu --warm-only --no-fla --warm-jobs 3 --warm-deadline 70 --shapes $S --points "$P" 2>&1 | grep "^warm"
wait  # the kernel tests too: nothing else on the GPU while timing
echo "tests+warm done t=$(( $(date +%s)-T0 ))"
for who in new base; do
  [ $(left) -lt 15 ] && break
  PP=/tmp/pkg:/tmp/site; [ $who = base ] && PP=/tmp/pkgbase:/tmp/site
  PYTHONPATH=$PP timeout $(( $(left) / 2 + 5 )) python3 -m carvelab.kernels.bench --gpu --no-fla --shapes $S --points "$P" --out $OUT/u_$who.json > $OUT/u_$who.log 2>&1
  echo "$who rc=$? t=$(( $(date +%s)-T0 ))"; grep -v -i warn $OUT/u_$who.log | tail -8 | cut -c1-180
done
grep -v -i warn $OUT/kernel_tests.log | tail -20
