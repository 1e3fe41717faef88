#!/bin/bash
# One lean device call for ATTENTION_NOTES v9 (the sm_90a backward's tail split, attention.go
# attnBwdTail), from the repository root with G carried (cuda.test, gputest.test, fewstep built on the
# development machine with CGO_ENABLED=0 and xz'd; src/: kernels/cuda/*.cu, *.cuh, build/,
# scripts/build-kernels.sh, scripts/attn_bench/ of the tree under test, since the device receives the
# session's checkout). Steps, each under its own timeout and skipped when the call's time runs short:
#   1. attention.cu alone by build-kernels.sh (the other families stay the committed fatbins): K;
#      the committed fatbins: KOLD. attention.fatbin, MANIFEST (the merged one) into $OUT at once;
#   2. the sm_90a backward on the harness's cases (attn_bench.py --only-bwd90: fp64 torch, masks, KV
#      offsets, Nq != Nk, the tail split with fp32 and bf16 gradients);
#   3. the Go attention tests on K (cuda.test 'Attention|Fused|ArtifactsFresh', OpsAgainstCPU/Attention);
#   4. `fewstep bench attention` at 32,760 / chunks of 4,680 / 4,680 tokens: K (tail split), K with
#      FEWSTEP_ATTN_TAIL=0 (32,760 only), KOLD (FEWSTEP_ATTN_TAIL=0: the committed kernel takes no negative qsplit);
#   5. attn_bench.py --bwd90-speed: tail, no tail, the committed kernel, mma.sync, SDPA flash, cuDNN;
#   6. the Wan-1.3B train step at 4,680 tokens on K and on KOLD (FEWSTEP_ATTN_TAIL=0);
#   7. gputest TestDiTAgainstCPU on K.
set -uo pipefail
export PYTHONUNBUFFERED=1
G=${G:-gpubuild/attn450}
OUT=${OUT:-/tmp/tail_out}
L=$OUT/log.txt W=/tmp/tail_logs
mkdir -p "$OUT" $W
t0=$(date +%s)
el() { echo $(($(date +%s) - t0)); }
log() { echo "[$(el)s] $*" | tee -a "$L"; }
finish() { tar czf $OUT/logs.tgz -C $W . 2>/dev/null; log "done"; exit ${1:-0}; }
cp -r $G/src/. .
(for f in cuda.test gputest.test fewstep; do
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" $G/$f.xz $G/$f && chmod +x $G/$f
done) &
upk=$!
K=/tmp/kern KOLD=/tmp/kold AB=/tmp/ab b=/tmp/bo
mkdir -p $K $KOLD $AB $b/kernels/cuda $b/scripts
cp kernels/cuda/build/*.fatbin kernels/cuda/build/MANIFEST $KOLD/
cp kernels/cuda/*.cuh kernels/cuda/attention.cu $b/kernels/cuda/ && cp scripts/build-kernels.sh $b/scripts/
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$L"
# 1. build
if ! (cd $b && OUT= NVCC="nvcc --threads 2" sh scripts/build-kernels.sh out) > $W/build.txt 2>&1; then
    log "KERNEL BUILD FAILED"; grep -iE "error" -A3 $W/build.txt | head -30 | tee -a "$L"; finish 1
fi
cp $KOLD/* $K/ && cp $b/out/attention.fatbin $K/
{ head -1 $KOLD/MANIFEST; { tail -n +2 $KOLD/MANIFEST; tail -n +2 $b/out/MANIFEST; } | awk '{l[$1] = $0} END {for (k in l) print l[k]}' | LC_ALL=C sort; } > $K/MANIFEST
cp $K/attention.fatbin $K/MANIFEST kernels/cuda/build/ && cp $K/attention.fatbin $K/MANIFEST $OUT/
cp $b/out/resource-usage.txt $OUT/
log "built: $(grep attention $K/MANIFEST)"
grep -E "_sm90'" -A3 $b/out/resource-usage.txt | grep -E "Compiling|registers|spill" | sed 's/ptxas info *: //' | grep -A2 "bwd" | tee -a "$L"
grep -hE "C75" $b/out/resource-usage.txt | head -3 | tee -a "$L"
cp $K/attention.fatbin $AB/attention.sm90a.cubin
export OLD_ATTN=$KOLD/attention.fatbin
# 2. harness checks
BWD90_VARIANTS= timeout 60 python3 scripts/attn_bench/attn_bench.py $AB --only-bwd90 > $W/check.txt 2>&1
rc=$?
log "harness --only-bwd90: exit $rc, $(grep -c ^PASS $W/check.txt) PASS, $(grep -c ^FAIL $W/check.txt) FAIL"
grep -E "^FAIL|Error|error" $W/check.txt | head -8 | tee -a "$L"
grep -E "^PASS.*tail" $W/check.txt | grep -oE "tail=\S+ B=\S+ Nq=\S+ Nk=\S+ .* grad=\S+|d[qkv]=[0-9.e+-]+" | paste -sd' ' | fold -w 400 | head -4 | tee -a "$L"
grep -E "^PASS" $W/check.txt | grep -oE "d[qkv]=[0-9.e+-]+" | sort -t= -k2 -g | tail -3 | paste -sd' ' | sed 's/^/  worst grads: /' | tee -a "$L"
wait $upk
[ $rc = 0 ] || finish 1
# 3. Go tests on the fresh kernels
export FEWSTEP_CUDA_KERNELS=$K
(cd kernels/cuda && timeout 50 ../../$G/cuda.test -test.run 'Attention|Fused|ArtifactsFresh' -test.count=1 -test.v > $W/gotest.txt 2>&1
    echo "exit $?" >> $W/gotest.txt
    timeout 30 ../../$G/cuda.test -test.run 'OpsAgainstCPU/Attention' -test.count=1 -test.v > $W/gotest2.txt 2>&1; echo "exit $?" >> $W/gotest2.txt)
log "cuda.test 'Attention|Fused|ArtifactsFresh': $(tail -1 $W/gotest.txt); OpsAgainstCPU/Attention: $(tail -1 $W/gotest2.txt)"
grep -hE "^(--- FAIL|FAIL|ok|PASS)|^    --- FAIL" $W/gotest.txt $W/gotest2.txt | head -12 | tee -a "$L"
grep -E "^    --- (PASS|FAIL).*tail split" $W/gotest.txt | tee -a "$L"
# 4. fewstep bench attention
for a in "--tokens 32760" "--tokens 32760 --chunk-tokens 4680" "--tokens 4680"; do
    for kd in "$K 1" "$K 0" "$KOLD 0"; do
        set -- $kd
        [ "$2$a" = "0--tokens 32760" ] || [ $2 = 1 ] || [ $1 = $KOLD ] || continue  # fresh without the split: 32,760 only
        r=$(FEWSTEP_CUDA_KERNELS=$1 FEWSTEP_ATTN_TAIL=$2 timeout 30 $G/fewstep bench attention $a --heads 12 --head-dim 128 --iters 10 --json 2>&1 | tail -1)
        log "bench attention $a [$([ $1 = $K ] && echo fresh || echo committed) tail=$2]: $(echo "$r" | grep -oE '"(bwd_ms|bwd_TFLOPs|fwd_ms)": *[0-9.]+' | paste -sd' ')"
    done
done
# 5. the harness's timings beside SDPA
if [ $(el) -lt 95 ]; then
    BWD90_VARIANTS= BWD90_OK=1 SPEED_REPS=2 timeout 40 python3 scripts/attn_bench/attn_bench.py $AB --bwd90-speed > $W/speed.txt 2>&1
    log "bwd90-speed exit $?"; grep -E "bwd" $W/speed.txt | grep -v mma.sync | tee -a "$L"
fi
# 6. the train step, fresh (tail split) and committed kernels
S="--preset wan2.1-1.3b --height 60 --width 104 --ctx 512 --frames 3 --iters 5 --warmup 2 --json"
for kd in "$K 1" "$KOLD 0"; do
    [ $(el) -lt 128 ] || break
    set -- $kd
    r=$(FEWSTEP_CUDA_KERNELS=$1 FEWSTEP_ATTN_TAIL=$2 timeout 25 $G/fewstep bench train $S 2>&1 | tail -1)
    log "bench train [$([ $1 = $K ] && echo fresh || echo committed) tail=$2]: $(echo "$r" | grep -oE '"(step_ms|ms|mfu|MFU)[^,}]*' | paste -sd' ') $(echo "$r" | head -c 300)"
done
# 7. gputest
if [ $(el) -lt 140 ]; then
    (cd kernels/cuda/gputest && timeout $((150 - $(el))) ../../../$G/gputest.test -test.run 'DiTAgainstCPU' -test.count=1 > $W/gputest.txt 2>&1; echo "exit $?" >> $W/gputest.txt)
    log "gputest DiTAgainstCPU: $(tail -1 $W/gputest.txt) $(grep -E '^(ok|FAIL|--- FAIL)' $W/gputest.txt | head -3 | paste -sd' ')"
fi
finish 0
