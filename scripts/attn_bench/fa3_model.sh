#!/bin/bash
# The whole-model check of the sm_90a forward (one device call, after fa3_run.sh): Wan-1.3B forward
# with the FA3-style attention, with the FA2-class one (FEWSTEP_ATTN=fa2) and PyTorch eager
# (wan_ref.py) in the same call, at 32,760 and 4,680 tokens; the Go attention benchmark; then the
# GPU test suites (cuda.test, gputest). Binaries from the development machine in gpubuild/attn
# (fewstep.gz, cuda.test, gputest.test, wan_ref.py), kernels embedded in them.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fa3_out}
mkdir -p "$OUT"
L=$OUT/log.txt
G=gpubuild/attn
log() { echo "$@" | tee -a "$L"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$L"
gunzip -fk $G/fewstep.gz
fw() { log "+ ${1:+FEWSTEP_ATTN=$1 }fewstep bench forward frames $2"; FEWSTEP_ATTN=$1 timeout 150 $G/fewstep bench forward --preset wan2.1-1.3b --frames $2 --height 60 --width 104 --iters 3 --warmup 1 2>&1 | tee -a "$L"; }
for fr in 21 3; do
    fw "" $fr; fw fa2 $fr; fw "" $fr
    log "+ wan_ref eager frames $fr"; timeout 150 python3 $G/wan_ref.py --preset wan1.3b --frames $fr 2>>$L | tee -a "$L"
done
for n in 32760 4680; do
    for a in "" fa2; do log "+ ${a:+FEWSTEP_ATTN=$a }fewstep bench attention $n"; FEWSTEP_ATTN=$a timeout 60 $G/fewstep bench attention --tokens $n --heads 12 --head-dim 128 --iters 10 2>&1 | tee -a "$L"; done
done
(cd kernels/cuda && timeout 240 ../../$G/cuda.test -test.v -test.count=1) > $OUT/tests.txt 2>&1
log "cuda.test exit $?"
(cd kernels/cuda/gputest && timeout 150 ../../../$G/gputest.test -test.v -test.count=1) >> $OUT/tests.txt 2>&1
log "gputest.test exit $?"
grep -E "^(--- FAIL|FAIL|ok|PASS)|panic" $OUT/tests.txt | head -40 | tee -a "$L"
grep -c "^--- PASS" $OUT/tests.txt | sed 's/^/tests passed: /' | tee -a "$L"
