#!/bin/bash
# One device call for the sm_90a (FA3-style) backward (ATTENTION_NOTES v7, v8), from the repository
# root, with G (default gpubuild/attnbwd) carried: cuda.test, gputest.test, fewstep (built on the
# development machine with CGO_ENABLED=0, xz-compressed or not). Steps:
#   1. all kernel families with scripts/build-kernels.sh (into /tmp/kern: the fatbins and MANIFEST to
#      commit come back in $OUT/kernels.tgz) and, beside it, each candidate of bwd3_variants.cu in
#      its own nvcc (BWD3V: the numbers to build, default all); ptxas lines and SASS counts;
#   2. the shipped backward alone on the harness's sm_90a cases (attn_bench.py --only-bwd90: fp64
#      torch reference, block-causal, KV-cache offsets, Nq != Nk, bf16 grads, query split), each
#      candidate on seven of them, each in its own process under a timeout (a broken one may hang);
#   3. the timings (--bwd90-speed): shipped, the previous attention.fatbin (the committed one,
#      "old sm90"), mma.sync, the candidates that passed, PyTorch SDPA flash and cuDNN, SPEED_REPS
#      rounds;
#   4. the Go attention tests and TestDiTAgainstCPU on the fresh kernels, `fewstep bench attention`.
# Logs: $OUT/log.txt (the summary), $OUT/logs.tgz (ptxas, SASS, checks, Go tests).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bwd3_out}
G=${G:-gpubuild/attnbwd}
L=$OUT/log.txt
W=/tmp/bwd3_logs
mkdir -p "$OUT" $W
log() { echo "$@" | tee -a "$L"; }
for f in cuda.test gputest.test fewstep; do
    [ -f $G/$f.xz ] && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" $G/$f.xz $G/$f && rm -f $G/$f.xz
    chmod +x $G/$f 2>/dev/null
done
K=/tmp/kern AB=/tmp/abv
mkdir -p $K $AB
cp kernels/cuda/build/attention.fatbin /tmp/attention_old.fatbin
export OLD_ATTN=/tmp/attention_old.fatbin
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$L"
t0=$(date +%s)
NAMES=(x m2r m4r m5r m6r m6 m4)  # BWD3V number → name (bwd3_variants.cu)
pids=()
for n in ${BWD3V:-1 2 3 4 5 6}; do
    v=${NAMES[$n]}
    nvcc -cubin -O3 -std=c++17 -Ikernels/cuda -gencode=arch=compute_90a,code=sm_90a -DBWD3V=$n -Xptxas -v \
        -o $AB/bwd3v_$v.cubin scripts/attn_bench/bwd3_variants.cu 2> $W/ptxas_$v.txt &
    pids+=($!)
done
if ! sh scripts/build-kernels.sh $K > $W/build.txt 2>&1; then
    log "KERNEL BUILD FAILED"; grep -iE "error" -A3 $W/build.txt | head -40 | tee -a "$L"
    tar czf $OUT/logs.tgz -C $W . ; exit 1
fi
cp /tmp/kern/MANIFEST $W/ 2>/dev/null
log "kernels built in $(( $(date +%s) - t0 )) s; $(grep attention $K/MANIFEST)"
for p in "${pids[@]}"; do wait $p; done
log "variants built in $(( $(date +%s) - t0 )) s"
tar czf $OUT/kernels.tgz -C $K .
cp $K/attention.fatbin $AB/attention.sm90a.cubin  # cuModuleLoad takes the fatbin
log "== ptxas (C7512/C7514 = serialized wgmma; C7508/C7509 = setmaxnreg ignored)"
sed -n '/== attention/,/^==/p' $K/resource-usage.txt | grep -E "sm90'|_sm90|finish" -A3 | grep -E "Compiling|registers|spill|stack" | sed 's/ptxas info *: //' | tee -a "$L"
grep -hE "C75" $W/ptxas_*.txt | grep -E "_sm90'" | sort | uniq -c | tee -a "$L"  # each variant build holds the shipped kernels too
ok=""
for n in ${BWD3V:-1 2 3 4 5 6}; do
    v=${NAMES[$n]}
    if [ ! -s $AB/bwd3v_$v.cubin ]; then log "variant $v: BUILD FAILED"; grep -i error $W/ptxas_$v.txt | head -5 | tee -a "$L"; continue; fi
    grep -E "Compiling entry function 'attn_bwd3v_$v'" -A4 $W/ptxas_$v.txt | grep -E "registers|spill|stack" | sed 's/ptxas info *: //' | tr '\n' ' ' | sed "s/^/$v: /" | tee -a "$L"; echo | tee -a "$L"
    grep -E "C75" $W/ptxas_$v.txt | grep bwd3v | sed "s/^/  /" | tee -a "$L"
    cuobjdump -sass -fun attn_bwd3v_$v $AB/bwd3v_$v.cubin > $W/sass_$v.txt 2>&1
    log "  SASS $v: HGMMA $(grep -c HGMMA $W/sass_$v.txt) LDL/STL $(grep -cE 'LDL|STL' $W/sass_$v.txt) WARPGROUP.DEPBAR $(grep -c 'WARPGROUP.DEPBAR' $W/sass_$v.txt)"
    ok="$ok attn_bwd3v_$v"
done
for f in attn_bwd_hd128_bf16_gf32_sm90; do
    cuobjdump -sass -fun $f $K/attention.fatbin > $W/sass_shipped.txt 2>&1
    log "SASS $f (shipped): HGMMA $(grep -c HGMMA $W/sass_shipped.txt) LDL/STL $(grep -cE 'LDL|STL' $W/sass_shipped.txt) WARPGROUP.DEPBAR $(grep -c 'WARPGROUP.DEPBAR' $W/sass_shipped.txt) UBLKRED $(grep -cE 'UBLKRED' $W/sass_shipped.txt)"
done
# 2. correctness, each in its own process (in parallel: the checks are small)
BWD90_VARIANTS= timeout 120 python3 scripts/attn_bench/attn_bench.py $AB --only-bwd90 > $W/check_shipped.txt 2>&1 &
cpid=$!
declare -A vp
for v in $ok; do
    BWD90_VARIANTS=$v BWD90_SKIP_SHIPPED=1 timeout 120 python3 scripts/attn_bench/attn_bench.py $AB --only-bwd90 > $W/check_$v.txt 2>&1 &
    vp[$v]=$!
done
wait $cpid; rc=$?
log "shipped backward alone: exit $rc"; grep -E "FAIL|BWD90|Error|error" $W/check_shipped.txt | head -20 | tee -a "$L"
grep -E "^PASS" $W/check_shipped.txt | awk '{for(i=1;i<=NF;i++) if($i ~ /^d[qkv]=/) print $i}' | sort -t= -k2 -g | tail -3 | tr '\n' ' ' | sed 's/^/  worst grads: /' | tee -a "$L"; echo | tee -a "$L"
passed=""
for v in $ok; do
    wait ${vp[$v]}; r=$?
    log "$v alone: exit $r $(grep -c ^PASS $W/check_$v.txt) PASS $(grep -c ^FAIL $W/check_$v.txt) FAIL"
    grep -E "^FAIL|Error" $W/check_$v.txt | head -3 | tee -a "$L"
    [ $r = 0 ] && passed="$passed $v"
done
# 3. timings
if [ $rc = 0 ] || [ "${FORCE:-0}" = 1 ]; then
    BWD90_VARIANTS="$passed" BWD90_OK=1 SPEED_REPS=${SPEED_REPS:-2} timeout 200 python3 scripts/attn_bench/attn_bench.py $AB --bwd90-speed 2>&1 | tee -a "$L"
fi
# 4. Go
if [ $rc = 0 ]; then
    export FEWSTEP_CUDA_KERNELS=$K
    (cd kernels/cuda && timeout 150 ../../$G/cuda.test -test.run 'FusedAttention|AttentionLaunchShapes|OpsAgainstCPU/Attention' -test.v -test.count=1) > $W/gotest.txt 2>&1
    log "cuda.test exit $?"; grep -E "^(--- |ok|FAIL|PASS)" $W/gotest.txt | head -30 | tee -a "$L"
    (cd kernels/cuda/gputest && timeout 120 ../../../$G/gputest.test -test.run 'DiTAgainstCPU' -test.v -test.count=1) > $W/gputest.txt 2>&1
    log "gputest DiTAgainstCPU exit $?"; grep -E "^(--- |ok|FAIL|PASS)" $W/gputest.txt | head -10 | tee -a "$L"
    if [ -x $G/fewstep ]; then
        for a in "--tokens 32760" "--tokens 32760 --chunk-tokens 4680" "--tokens 4680"; do
            timeout 60 $G/fewstep bench attention $a --heads 12 --head-dim 128 --iters 5 2>&1 | tail -3 | tee -a "$L"
        done
    fi
fi
tar czf $OUT/logs.tgz -C $W .
log "done in $(( $(date +%s) - t0 )) s"
