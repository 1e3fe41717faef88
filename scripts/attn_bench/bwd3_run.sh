#!/bin/bash
# One device call for the sm_90a (FA3-style) backward (ATTENTION_NOTES v7): build attention.fatbin the
# way scripts/build-kernels.sh does (its plain flags) with the ptxas report, the new backward checked
# alone under a timeout (a broken one may hang on its mbarriers), a quick A/B against the mma.sync
# backward, the Go attention tests and the DiT test on the fresh fatbin, then the harness's checks and
# timings beside SDPA flash and cuDNN. From the repository root, with G (default gpubuild/attnbwd)
# carried: cuda.test, gputest.test (built on the development machine with CGO_ENABLED=0 go test -c)
# and, when the tree the device receives is not the one under test, src/attention.cu and
# src/attn_bench.py, src/attention_variants.cu (copied into place first).   Logs: $OUT/log.txt, ptxas.txt, ptxas_variants.txt, gotest.txt, gputest.txt.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bwd3_out}
G=${G:-gpubuild/attnbwd}
L=$OUT/log.txt
mkdir -p "$OUT"
log() { echo "$@" | tee -a "$L"; }
if [ -d $G/src ]; then cp $G/src/attention.cu kernels/cuda/attention.cu; cp $G/src/attn_bench.py $G/src/attention_variants.cu scripts/attn_bench/; fi
K=/tmp/kern
mkdir -p $K /tmp/ab /tmp/abv
cp kernels/cuda/build/*.fatbin $K/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$L"
t0=$(date +%s)
arch="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80"
V=(attn_bwd3v_m0 attn_bwd3v_m1 attn_bwd3v_m1r40)  # the backward variants of attention_variants.cu (BWD3)
nvcc -cubin -O3 -std=c++17 -Ikernels/cuda -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/abv/attention_variants.sm90a.cubin \
    scripts/attn_bench/attention_variants.cu 2> $OUT/ptxas_variants.txt &
vpid=$!
if ! nvcc -fatbin -O3 -std=c++17 $arch -Xptxas -v -o $K/attention.fatbin kernels/cuda/attention.cu 2> $OUT/ptxas.txt; then
    log "BUILD FAILED"; grep -iE "error" $OUT/ptxas.txt | head -30 | tee -a "$L"; exit 1
fi
hash=$(cat kernels/cuda/attention.cu $(ls kernels/cuda/*.cuh | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)
log "built in $(( $(date +%s) - t0 )) s; MANIFEST line: attention.fatbin $hash nvcc-$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
cp $K/attention.fatbin $OUT/
cp $K/attention.fatbin /tmp/ab/attention.sm90a.cubin  # cuModuleLoad takes the fatbin
cp $K/attention.fatbin /tmp/abv/attention.sm90a.cubin  # used where the variants did not build
log "== ptxas (C7514 = serialized wgmma; C7508/C7509 = setmaxnreg ignored)"
grep -E "Compiling entry" -A4 $OUT/ptxas.txt | grep -E "sm90|finish" -A4 | grep -E "Compiling|registers|spill|stack" | sed 's/ptxas info *: //' | tee -a "$L"
grep -iE "warning|C75" $OUT/ptxas.txt | sort | uniq -c | tee -a "$L"
wait $vpid && log "variants built" || { log "VARIANTS BUILD FAILED"; V=(); }
for v in "${V[@]}"; do grep -E "Compiling entry function '$v'" -A3 $OUT/ptxas_variants.txt | grep -E "Compiling|registers|spill" | sed 's/ptxas info *: //' | tee -a "$L"; done
grep -E "C75" $OUT/ptxas_variants.txt | grep bwd3v | tee -a "$L"
for f in attn_bwd_hd128_bf16_gf32_sm90 attn_fwd_hd128_bf16_sm90; do
    cuobjdump -sass -fun $f /tmp/ab/attention.sm90a.cubin > /tmp/sass.txt 2>&1
    log "SASS $f: HGMMA $(grep -c HGMMA /tmp/sass.txt) LDL/STL $(grep -cE 'LDL|STL' /tmp/sass.txt) UBLKRED $(grep -cE 'UBLKRED|BLKRED' /tmp/sass.txt)"
done
cuobjdump -sass -fun attn_bwd_hd128_bf16_gf32_sm90 /tmp/ab/attention.sm90a.cubin | gzip > $OUT/sass_bwd.txt.gz
for f in "${V[@]}"; do
    cuobjdump -sass -fun $f /tmp/abv/attention_variants.sm90a.cubin > /tmp/sass.txt 2>&1
    log "SASS $f: HGMMA $(grep -c HGMMA /tmp/sass.txt) LDL/STL $(grep -cE 'LDL|STL' /tmp/sass.txt)"
done
export BWD90_VARIANTS="${V[*]}"
timeout 150 python3 scripts/attn_bench/attn_bench.py /tmp/abv --only-bwd90 2>&1 | tee -a "$L"
rc=${PIPESTATUS[0]}
log "bwd90 alone: exit $rc"
timeout 120 python3 scripts/attn_bench/attn_bench.py /tmp/abv --bwd90-speed 2>&1 | tee -a "$L"
if [ $rc != 0 ] && [ "${FORCE:-0}" != 1 ]; then exit 1; fi
export FEWSTEP_CUDA_KERNELS=$K
(cd kernels/cuda && timeout 150 ../../$G/cuda.test -test.run 'FusedAttention|AttentionLaunchShapes|OpsAgainstCPU/Attention' -test.v -test.count=1) > $OUT/gotest.txt 2>&1
log "cuda.test exit $?"; grep -E "^(--- |ok|FAIL|PASS)|rel error" $OUT/gotest.txt | grep -E "^(--- |ok|FAIL|PASS)|^ *--- FAIL" | head -40 | tee -a "$L"
(cd kernels/cuda/gputest && timeout 120 ../../../$G/gputest.test -test.run 'DiTAgainstCPU' -test.v -test.count=1) > $OUT/gputest.txt 2>&1
log "gputest DiTAgainstCPU exit $?"; grep -E "^(--- |ok|FAIL|PASS)" $OUT/gputest.txt | head -20 | tee -a "$L"
BWD90_VARIANTS= BWD90_OK=1 WGMMA_OK=attn_fwd_hd128_bf16_sm90 timeout 280 python3 scripts/attn_bench/attn_bench.py /tmp/ab ${BENCH_ARGS:---quick --no-flex} 2>&1 | grep -vE "^PASS" | tee -a "$L"
