#!/bin/bash
# One device call for the sm_90a (FA3-style) forward: build, ptxas/SASS checks, each wgmma kernel
# checked alone (a broken one may hang: timeouts), then the harness's checks and timings, the Go
# tests, and (MODEL=1) the Wan-1.3B forward beside PyTorch eager. Run from the repository root with
# gpubuild/attn carried (cuda.test, fewstep.gz, wan_ref.py built/copied on the development machine).
#   bash scripts/attn_bench/fa3_run.sh          logs: $OUT/log.txt, $OUT/ptxas.txt, $OUT/kernels.tgz
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fa3_out}
mkdir -p "$OUT"
B=/tmp/attn_build
L=$OUT/log.txt
G=gpubuild/attn
log() { echo "$@" | tee -a "$L"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$L"
(OUT= scripts/build-kernels.sh /tmp/kern > /tmp/kern.log 2>&1; echo "build-kernels exit $?" >> /tmp/kern.log) &
kpid=$!
bash scripts/attn_bench/build.sh $B > $OUT/build.txt 2>&1 || { log "BUILD FAILED"; tail -30 $OUT/build.txt; exit 1; }
cp $B/attention.ptxas.txt $OUT/ptxas.txt
log "== ptxas on the FA3 kernels (C7514 = serialized wgmma; C7508/C7509 = setmaxnreg ignored)"
grep -E "fwd3|fwd_hd128_bf16_sm90" -A4 $B/attention.ptxas.txt | grep -E "Compiling|registers|spill|stack" | tee -a "$L"
grep -iE "warning|C75" $B/attention.ptxas.txt | sort | uniq -c | tee -a "$L"
cuobjdump -sass -fun attn_fwd_hd128_bf16_sm90 $B/attention.sm90a.cubin > /tmp/sass.txt 2>&1
log "SASS attn_fwd_hd128_bf16_sm90: HGMMA $(grep -c HGMMA /tmp/sass.txt) LDL/STL $(grep -cE 'LDL|STL' /tmp/sass.txt) WARPSYNC $(grep -c WARPSYNC /tmp/sass.txt) BAR $(grep -cE ' BAR' /tmp/sass.txt)"
ok=""
for v in ${FA3_KERNELS:-attn_fwd_hd128_bf16_sm90 attn_fwd3v_ns2 attn_fwd3v_ns3pp attn_fwd3v_ns2pp_vswap}; do
    if timeout 120 python3 scripts/attn_bench/attn_bench.py $B --only-variant $v >> $L 2>&1; then ok="$ok $v"; log "ALONE OK $v"; else log "ALONE FAIL $v (exit $?)"; fi
done
grep -E "^(PASS|FAIL)" $L | tail -40
export WGMMA_OK="$ok"
timeout 330 python3 scripts/attn_bench/attn_bench.py $B ${BENCH_ARGS:---quick --no-flex} 2>&1 | grep -vE "^PASS" | tee -a "$L"
wait $kpid; tail -3 /tmp/kern.log | tee -a "$L"
cp /tmp/kern/MANIFEST /tmp/kern/resource-usage.txt $OUT/ 2>/dev/null; tar czf $OUT/kernels.tgz -C /tmp/kern . 2>/dev/null
mkdir -p /tmp/kt && cp kernels/cuda/build/*.fatbin /tmp/kt/ && cp $B/attention.fatbin /tmp/kt/
export FEWSTEP_CUDA_KERNELS=/tmp/kt
(cd kernels/cuda && timeout 200 ../../$G/cuda.test -test.run "${GO_TESTS:-Attention}" -test.v -test.count=1) > $OUT/gotest.txt 2>&1
log "cuda.test exit $?"; grep -E "^(--- |ok|FAIL|PASS)|rel error" $OUT/gotest.txt | head -60 | tee -a "$L"
if [ "${MODEL:-1}" = 1 ] && [[ " $ok " == *" attn_fwd_hd128_bf16_sm90 "* ]]; then
    gunzip -fk $G/fewstep.gz
    for fr in 21 3; do
        log "+ fewstep bench forward frames $fr"; timeout 150 $G/fewstep bench forward --preset wan2.1-1.3b --frames $fr --height 60 --width 104 --iters 3 --warmup 1 2>>$L | tee -a "$L"
        log "+ FEWSTEP_ATTN=fa2"; FEWSTEP_ATTN=fa2 timeout 150 $G/fewstep bench forward --preset wan2.1-1.3b --frames $fr --height 60 --width 104 --iters 3 --warmup 1 2>>$L | tee -a "$L"
        log "+ wan_ref eager frames $fr"; timeout 150 python3 $G/wan_ref.py --preset wan1.3b --frames $fr 2>>$L | tee -a "$L"
    done
fi
