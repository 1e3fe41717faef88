#!/bin/bash
# One device call of the speed work (issue 14), after scripts/gpu-speed.sh prepare here:
#   prepare (development machine): G=gpubuild/speed (inside the checkout the device receives, git-ignored):
#     the test binaries, fewstep, objectives.test (built from this worktree), its kernel sources under
#     $G/src, wan_ref.py, this script.
#   on the device (carry [G]): bash $G/gpu-speed.sh [steps...]
#     build   the kernels from $G/src with nvcc (all families at once), used by everything after it
#     tests   cuda.test (in $G/src/kernels/cuda: TestArtifactsFresh checks the fresh build), gputest,
#             objectives' GPU-vs-CPU training tests, model vjp against the PyTorch goldens
#     sf      the Wan-1.3B Self-Forcing step (7 chunks x 4,680 tokens) under a 79.6 GiB cap
#     ours    forward at 4,680 (profile) and 32,760 tokens, train step at 4,680 (profile), attention
#     peer    wan_ref.py eager: forward and train step at 4,680, forward at 32,760
#     final   ours (forward 4,680 and 32,760, train step beside the eager peer, attention) and
#             wan_ref.py compiled forward at 4,680: the lean last call
#     compile wan_ref.py compiled: forward and train step at 4,680; compile21: forward at 32,760
#     peers-start  wan_ref.py compiled (forward; train step) in the background on CPUs 4-15 through
#                  wan_ref_barrier.py: they compile beside the steps that follow, and time only after
#     peers-wait   releases them (the barrier file) once nothing of ours runs, and waits for them
#     ab      ours with the session-5 fusions (default) and without (FEWSTEP_FUSE=0 FEWSTEP_ATTN_SPLIT=0):
#             forward 4,680 (graph, profile), train step, forward+backward profile; forward 32,760
#     eager   wan_ref.py eager: forward and train step at 4,680, forward at 32,760
#     s6      ours with the sm_90a attention backward and without (FEWSTEP_ATTN_BWD=fa2), profile after
#     demo    the main job (fewstep demo) on the card, its table
#     ab14    ours: train step and forward+backward profile with and without the column sums in the
#             row kernels (FEWSTEP_COLFUSE=0, FEWSTEP_COLFUSE_BIAS=0); quicktests: cuda.test's ops
#             (TESTS); ditests: gputest; follow: objectives' GPU-vs-CPU training tests
#     ab12    ours: train step with everything, without the training GELU epilogues, without fusions;
#             forward+backward profile (AB12_PROFILE_OFF=1: also without the GELU epilogues); forward
#             4,680 (graph)
#     ab9     the tail split on and off, alternated, attention at 32,760 tokens
#     ab10    the batched QKV GEMMs on and off (FEWSTEP_QKV=0): train step, profiles, forward; the dmd
#             trainer step with device and host noise
#     s10     the measuring call's figures of ours (beside peers-start/peers-wait); vjp: model vjp only
#     (tests also runs trainer.test's GPU tests)
#     s9      ours with the backward's tail split and without (FEWSTEP_ATTN_TAIL=0): train step, attention
#             at 32,760 / chunks of 4,680 / 4,680 tokens; forwards and profiles; wan_ref.py eager at 32,760
# The call of session 5: bash $G/gpu-speed.sh peers-start build tests ab eager peers-wait
# The last call of session 6: bash $G/gpu-speed.sh peers-start build tests s6 sf demo peers-wait
# The last call of session 7: BUILD_ONLY="attention layernorm modulate rmsnorm" bash $G/gpu-speed.sh build sf peers-start tests ab14 s7 demo peers-wait
# The calls of session 10: bash $G/gpu-speed.sh build tests (fatbins and every GPU test); then, with
#   the fatbins committed: TESTS=. bash $G/gpu-speed.sh quicktests vjp ab10; last: sf peers-start s10 demo peers-wait
# The calls of session 9: BUILD_ONLY=attention bash $G/gpu-speed.sh build sf peers-start tests s9 demo peers-wait
#   (its tests' output did not come back: more than 8 files in $OUT; the script now ends by packing all but log.txt, bench.jsonl and kernels.tgz into side.tgz), then with the built fatbin
#   committed: bash $G/gpu-speed.sh tests ab9
#   (the Self-Forcing step before the peers start: waiting at their barrier they hold ~13 GiB of the card)
set -uo pipefail
G=${G:-gpubuild/speed}
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
if [ "${1:-}" = prepare ]; then
    set -e
    cd "$(dirname "$0")/.."
    dst=${DST:?DST=/work/main/gpubuild/speed}
    rm -rf "$dst" && mkdir -p "$dst/src/kernels/cuda/build" "$dst/src/scripts"
    export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
    go test -c -ldflags="-s -w" -o "$dst/cuda.test" ./kernels/cuda
    go test -c -ldflags="-s -w" -o "$dst/gputest.test" ./kernels/cuda/gputest
    go test -c -ldflags="-s -w" -o "$dst/objectives.test" ./objectives
    go test -c -ldflags="-s -w" -o "$dst/trainer.test" ./trainer
    go build -ldflags="-s -w" -o "$dst/fewstep" ./cmd/fewstep
    for f in cuda.test gputest.test objectives.test trainer.test fewstep; do xz -9 -T2 "$dst/$f"; done # xz: the tree that travels stays under 64 MiB
    cp kernels/cuda/*.cu kernels/cuda/*.cuh "$dst/src/kernels/cuda/"
    cp kernels/cuda/build/*.fatbin kernels/cuda/build/MANIFEST "$dst/src/kernels/cuda/build/" # the committed fatbins (the build step replaces them)
    cp scripts/build-kernels.sh "$dst/src/scripts/"
    cp scripts/gpu-speed.sh scripts/wan_ref_barrier.py "$dst/"
    cp "${WAN_REF:-/work/shared/reference/wan_ref.py}" "$dst/wan_ref.py"
    git log -1 --format='%H %s' > "$dst/COMMIT"
    du -sh "$dst"
    exit 0
fi
L=$OUT/log.txt
log() { echo "$@" | tee -a "$L"; }
for f in cuda.test gputest.test objectives.test trainer.test fewstep; do
    [ -f $G/$f.gz ] && gunzip -f $G/$f.gz
    [ -f $G/$f.xz ] && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" $G/$f.xz $G/$f && rm -f $G/$f.xz
done
chmod +x $G/*.test $G/fewstep 2>/dev/null
log "$(date -u) binaries from $(cat $G/COMMIT)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$L"
FS=$G/fewstep
J=$OUT/bench.jsonl
PIN=""
command -v taskset > /dev/null && PIN="taskset -c 0-3" # ours on CPUs 0-3, the compiling peers on 4-15
run() { local to=$1; shift; log "+ $*"; local t0=$(date +%s); timeout "$to" $PIN "$@" 2>>"$L" | tee -a "$J"; log "  exit ${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s"; }
# vjp_check: model vjp on the GPU against the PyTorch goldens of models/testdata (bidirectional, causal)
vjp_check() {
    T=models/testdata
    for v in bidir causal; do
        flag=""; [ $v = causal ] && flag="--chunk-frames 1"
        $FS model vjp --model-config $T/odd.config.json --weights $T/odd.weights.safetensors \
            --inputs $T/odd_$v.inputs.safetensors $flag --device cuda --out $G/vjp_$v.safetensors > /dev/null 2>> "$L" || log "model vjp $v FAILED"
        python3 - $G/vjp_$v.safetensors $T/odd_$v.expect.safetensors <<'PY' | tee -a "$L"
import sys, numpy as np
from safetensors.numpy import load_file
got, want = load_file(sys.argv[1]), load_file(sys.argv[2])
worst = max(((float(np.linalg.norm(got[k].astype(np.float64) - want[k]) / max(np.linalg.norm(want[k].astype(np.float64)), 1e-30)), k) for k in want), default=(float("nan"), "-"))
missing = [k for k in want if k not in got]
print("model vjp --device cuda vs PyTorch golden %s: %d tensors, worst rel error %.3g (%s)%s" % (sys.argv[2].split("/")[-1], len(want), worst[0], worst[1], ", MISSING %s" % missing if missing else ""))
PY
    done
}
OFF="env FEWSTEP_FUSE=0 FEWSTEP_ATTN_SPLIT=0" # the fusions of session 5 off: the code as before them
case $OUT in /*) BARRIER=$OUT/.barrier ;; *) BARRIER=$PWD/$OUT/.barrier ;; esac
W="--preset wan2.1-1.3b --height 60 --width 104 --ctx 512"
[ -d $G/src/kernels/cuda/build ] && [ -f $G/src/kernels/cuda/build/MANIFEST ] && export FEWSTEP_CUDA_KERNELS=$PWD/$G/src/kernels/cuda/build
for s in ${*:-build tests sf ours}; do
case $s in
build)
    t0=$(date +%s)
    if [ -n "${BUILD_ONLY:-}" ]; then # BUILD_ONLY="layernorm rmsnorm": only these families; the others stay the committed fatbins
        b=$G/buildonly
        rm -rf $b && mkdir -p $b/kernels/cuda $b/scripts
        cp $G/src/kernels/cuda/*.cuh $b/kernels/cuda/ && cp $G/src/scripts/build-kernels.sh $b/scripts/
        for f in $BUILD_ONLY; do cp $G/src/kernels/cuda/$f.cu $b/kernels/cuda/; done
        if (cd $b && OUT= sh scripts/build-kernels.sh out) > "$OUT/build.txt" 2>&1; then
            M=$G/src/kernels/cuda/build/MANIFEST
            { head -1 $M; { tail -n +2 $M; tail -n +2 $b/out/MANIFEST; } | awk '{l[$1] = $0} END {for (k in l) print l[k]}' | LC_ALL=C sort; } > $b/MANIFEST
            cp $b/out/*.fatbin $G/src/kernels/cuda/build/ && cp $b/MANIFEST $M
            cp $b/out/resource-usage.txt "$OUT/resource-usage.txt"
            log "kernels built ($BUILD_ONLY) in $(( $(date +%s) - t0 )) s"
        else
            log "KERNEL BUILD FAILED in $(( $(date +%s) - t0 )) s"; tail -30 "$OUT/build.txt" | tee -a "$L"
        fi
    elif (cd $G/src && sh scripts/build-kernels.sh kernels/cuda/build) > "$OUT/build.txt" 2>&1; then
        log "kernels built in $(( $(date +%s) - t0 )) s"
    else
        log "KERNEL BUILD FAILED in $(( $(date +%s) - t0 )) s"; tail -30 "$OUT/build.txt" | tee -a "$L"
    fi
    export FEWSTEP_CUDA_KERNELS=$PWD/$G/src/kernels/cuda/build
    tar czf "$OUT/kernels.tgz" -C $G/src/kernels/cuda/build . ;;
tests)
    t0=$(date +%s)
    (cd $G/src/kernels/cuda && timeout 240 ../../../cuda.test -test.v -test.count=1) > "$OUT/tests.txt" 2>&1
    log "cuda.test exit $? in $(( $(date +%s) - t0 )) s"
    t0=$(date +%s)
    (cd kernels/cuda/gputest && timeout 120 ../../../$G/gputest.test -test.v -test.count=1) >> "$OUT/tests.txt" 2>&1
    log "gputest.test exit $? in $(( $(date +%s) - t0 )) s"
    grep -E "^(--- FAIL|FAIL|ok|PASS)|rel error .* >|panic" "$OUT/tests.txt" | head -40 | tee -a "$L"
    t0=$(date +%s)
    (cd objectives && timeout 150 ../$G/objectives.test -test.run 'TestGPUTrainingFollowsCPU|TestGPURolloutBF16Cache' -test.v -test.count=1) > "$OUT/follow.txt" 2>&1
    log "objectives.test GPU-vs-CPU exit $? in $(( $(date +%s) - t0 )) s"
    grep -E -- "--- (PASS|FAIL|SKIP)|panic" "$OUT/follow.txt" | head -30 | tee -a "$L"
    t0=$(date +%s)
    (cd trainer && timeout 120 ../$G/trainer.test -test.run "${TRAINER_TESTS:-GPU|Recompute}" -test.v -test.count=1) > "$OUT/trainer.txt" 2>&1
    log "trainer.test GPU exit $? in $(( $(date +%s) - t0 )) s"
    grep -E -- "--- (PASS|FAIL|SKIP)|panic" "$OUT/trainer.txt" | head -30 | tee -a "$L"
    vjp_check ;;
sf)  run 200 $FS bench train --json $W --frames 21 --objective selfforcing --chunk-frames 3 --recompute --mem-limit-gib 79.6 --iters ${SF_ITERS:-2} --warmup 1 ;;
ours)
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10 --profile
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10 --bf16-operands=false
    run 90 $FS bench forward --json $W --frames 21 --iters 3 --warmup 1
    run 60 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $FS bench train --json $W --frames 3 --iters 5 --warmup 2 --bf16-operands=false
    run 60 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 60 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5
    run 60 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --chunk-tokens 4680 --iters 5 ;;
peer) # --train times the forward (no grad) first, then the train step
    run 120 python3 $G/wan_ref.py --preset wan1.3b --frames 3 --train
    run 120 python3 $G/wan_ref.py --preset wan1.3b --frames 21 ;;
compile)
    run ${COMPILE_TO:-400} python3 $G/wan_ref.py --preset wan1.3b --frames 3 --train --compile ;;
compile21)
    run ${COMPILE_TO:-200} python3 $G/wan_ref.py --preset wan1.3b --frames 21 --compile ;;
final) # the lean set of the last call: ours and the peers (eager, compiled forward) side by side
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10
    run 60 $FS bench forward --json $W --frames 21 --iters 2 --warmup 1
    run 150 $FS bench train --json $W --frames 3 --iters 5 --warmup 2 --peer $G/wan_ref.py
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5
    run ${COMPILE_TO:-150} python3 $G/wan_ref.py --preset wan1.3b --frames 3 --compile ;;
peers-start)
    PP=""
    command -v taskset > /dev/null && PP="taskset -c 4-15"
    rm -f "$BARRIER.fwd" "$BARRIER.train"
    # one barrier file each: peers-wait releases them one after the other, so neither times beside the other
    ( t0=$(date +%s); BARRIER=$BARRIER.fwd timeout ${PEER_TO:-520} $PP python3 $G/wan_ref_barrier.py $G/wan_ref.py --preset wan1.3b --frames 3 --compile > "$OUT/peer_fwd.json" 2>> "$OUT/peers.txt"
      echo "compiled forward peer exit $? in $(( $(date +%s) - t0 )) s" >> "$OUT/peers.txt" ) &
    PEER1=$!
    ( t0=$(date +%s); BARRIER=$BARRIER.train timeout ${PEER_TO:-520} $PP python3 $G/wan_ref_barrier.py $G/wan_ref.py --skip-fwd --preset wan1.3b --frames 3 --train --compile > "$OUT/peer_train.json" 2>> "$OUT/peers.txt"
      echo "compiled train-step peer exit $? in $(( $(date +%s) - t0 )) s" >> "$OUT/peers.txt" ) &
    PEER2=$!
    log "compiled peers started (pids $PEER1 $PEER2) $PP" ;;
peers-wait)
    log "$(date -u) releasing the compiled peers"
    grep -h "wan_ref_barrier" "$OUT/peers.txt" | tee -a "$L"
    touch "$BARRIER.fwd"
    wait ${PEER1:-} 2>/dev/null
    touch "$BARRIER.train"
    wait ${PEER2:-} 2>/dev/null
    log "$(date -u) peers done"
    grep -v "^ *warnings.warn\|UserWarning" "$OUT/peers.txt" | tail -12 | tee -a "$L"
    cat "$OUT/peer_fwd.json" "$OUT/peer_train.json" 2>/dev/null | tee -a "$L" "$J"
    rm -f "$OUT/peer_fwd.json" "$OUT/peer_train.json" ;;
ab)
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10 --profile
    run 60 $OFF $FS bench forward --json $W --frames 3 --graph --iters 10 --profile
    run 60 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $OFF $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 60 $OFF $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 90 $FS bench forward --json $W --frames 21 --iters 3 --warmup 1
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5 ;;
ab12) # session 6 (stepfuse, kernels/cuda/NOTES.md v12): everything on; without the training GELU
      # epilogues (FEWSTEP_GELU_AUX=0); without any fusion (the code before session 5's)
    run 60 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 env FEWSTEP_GELU_AUX=0 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $OFF $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    [ -n "${AB12_PROFILE_OFF:-}" ] && run 60 env FEWSTEP_GELU_AUX=0 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10 ;;
s6) # session 6's last call (NOTES.md v13): the step and forwards with the sm_90a attention backward
    # and the training GELU epilogues, the same without the new backward (FEWSTEP_ATTN_BWD=fa2),
    # the profile after, the attention alone (new and old backward)
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10
    run 60 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 env FEWSTEP_ATTN_BWD=fa2 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 90 $FS bench forward --json $W --frames 21 --iters 2 --warmup 1
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5
    run 40 env FEWSTEP_ATTN_BWD=fa2 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --chunk-tokens 4680 --iters 5
    run 40 $FS bench attention --json --tokens 4680 --heads 12 --head-dim 128 --iters 10 ;;
ab14) # session 7 (colfuse, kernels/cuda/NOTES.md v14): the train step and the forward+backward
      # profile with the column sums folded into the norm and gate backwards (default), without the
      # bias gradients taken there (FEWSTEP_COLFUSE_BIAS=0), and without any (FEWSTEP_COLFUSE=0: the
      # row kernels and colreduce as in v13)
    run 45 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 45 env FEWSTEP_COLFUSE=0 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 45 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 45 env FEWSTEP_COLFUSE=0 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 45 env FEWSTEP_COLFUSE_BIAS=0 $FS bench train --json $W --frames 3 --iters 5 --warmup 2 ;;
quicktests) # cuda.test's ops against the CPU (TESTS: the -test.run pattern)
    t0=$(date +%s)
    (cd $G/src/kernels/cuda && timeout ${QT_TO:-90} ../../../cuda.test -test.v -test.count=1 -test.run "${TESTS:-TestOpsAgainstCPU|TestColumnSums|TestArtifactsFresh}") > "$OUT/tests.txt" 2>&1
    log "cuda.test exit $? in $(( $(date +%s) - t0 )) s"
    grep -E "^(--- FAIL|FAIL|ok|PASS)|rel error .* >|panic" "$OUT/tests.txt" | head -40 | tee -a "$L" ;;
ditests) # gputest: the whole DiT against the CPU
    t0=$(date +%s)
    (cd kernels/cuda/gputest && timeout 90 ../../../$G/gputest.test -test.v -test.count=1) > "$OUT/ditests.txt" 2>&1
    log "gputest.test exit $? in $(( $(date +%s) - t0 )) s"
    grep -E "^(--- FAIL|FAIL|ok|PASS)|rel error .* >|panic" "$OUT/ditests.txt" | head -40 | tee -a "$L" ;;
follow) # objectives' GPU-vs-CPU training tests
    t0=$(date +%s)
    (cd objectives && timeout ${FOLLOW_TO:-150} ../$G/objectives.test -test.run 'TestGPUTrainingFollowsCPU' -test.v -test.count=1) > "$OUT/follow.txt" 2>&1
    log "objectives.test GPU-vs-CPU exit $? in $(( $(date +%s) - t0 )) s"
    grep -E -- "--- (PASS|FAIL|SKIP)|panic" "$OUT/follow.txt" | head -30 | tee -a "$L" ;;
s7) # session 7's last call (NOTES.md v14): the forwards and the attention alone beside ab14's steps
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10
    run 90 $FS bench forward --json $W --frames 21 --iters 2 --warmup 1
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --chunk-tokens 4680 --iters 5
    run 40 $FS bench attention --json --tokens 4680 --heads 12 --head-dim 128 --iters 10 ;;
s9) # session 9 (ATTENTION_NOTES.md v9, the backward's tail split): the train step and the attention with
    # the split (default) and without (FEWSTEP_ATTN_TAIL=0), the forwards, the profiles, the eager
    # peer's forward at 32,760 tokens
    run 45 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 45 env FEWSTEP_ATTN_TAIL=0 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 45 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10 --profile
    run 90 $FS bench forward --json $W --frames 21 --iters 2 --warmup 1
    for a in "--tokens 32760" "--tokens 32760 --chunk-tokens 4680" "--tokens 4680"; do
        run 40 $FS bench attention --json $a --heads 12 --head-dim 128 --iters 10
        run 40 env FEWSTEP_ATTN_TAIL=0 $FS bench attention --json $a --heads 12 --head-dim 128 --iters 10
    done
    run 120 python3 $G/wan_ref.py --preset wan1.3b --frames 21 ;;
ab10) # session 10 (NOTES.md v16): A/B in one binary: the train step with the batched QKV / cross K/V
      # GEMMs and without (FEWSTEP_QKV=0), alternated; both profiles; the forward (graph) both ways; the
      # dmd trainer step (gated optimizer) with device noise and with host noise
    for i in 1 2; do
        run 45 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
        run 45 env FEWSTEP_QKV=0 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    done
    run 45 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 45 env FEWSTEP_QKV=0 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 45 $FS bench forward --json $W --frames 3 --graph --iters 10
    run 45 env FEWSTEP_QKV=0 $FS bench forward --json $W --frames 3 --graph --iters 10
    run 60 $FS bench train --json $W --frames 3 --objective dmd --iters 4 --warmup 1
    run 60 $FS bench train --json $W --frames 3 --objective dmd --iters 4 --warmup 1 --noise host ;;
s10) # session 10's measuring call (beside peers-start/peers-wait): the train step, the forwards with
     # the profile, the attention at 32,760 tokens three times, chunks of 4,680, 4,680 tokens, and
     # the eager peer's forward at 32,760
    run 45 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 45 $FS bench forward --json $W --frames 3 --train --profile --iters 3 --warmup 1
    run 45 $FS bench forward --json $W --frames 3 --graph --iters 10 --profile
    run 90 $FS bench forward --json $W --frames 21 --iters 2 --warmup 1
    for i in 1 2 3; do run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 10; done
    run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --chunk-tokens 4680 --iters 10
    run 40 $FS bench attention --json --tokens 4680 --heads 12 --head-dim 128 --iters 10
    run 120 python3 $G/wan_ref.py --preset wan1.3b --frames 21 ;;
vjp) # model vjp on the GPU against the PyTorch goldens (also the end of tests)
    vjp_check ;;
ab9) # the tail split's A/B at 32,760 tokens, alternated (a card's clocks drift between runs)
    for i in 1 2 3; do
        run 40 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 10
        run 40 env FEWSTEP_ATTN_TAIL=0 $FS bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 10
    done ;;
demo) # the main job on the card (README: the same table as the CPU's within noise)
    t0=$(date +%s)
    timeout 150 $PIN $FS demo --set device=cuda --out $G/demo_run > "$OUT/demo.txt" 2>&1
    log "demo --set device=cuda exit $? in $(( $(date +%s) - t0 )) s"
    cp $G/demo_run/eval/table.txt "$OUT/demo_table.txt" 2>/dev/null && cat "$OUT/demo_table.txt" | tee -a "$L" ;;
verify) # the lean second call: the fatbins of the first, ours only
    run 60 $FS bench forward --json $W --frames 3 --graph --iters 10
    run 60 $FS bench train --json $W --frames 3 --iters 5 --warmup 2
    run 60 $FS bench forward --json $W --frames 21 --iters 2 --warmup 1
    run 60 $OFF $FS bench forward --json $W --frames 21 --iters 2 --warmup 1 ;;
eager)
    run 120 python3 $G/wan_ref.py --preset wan1.3b --frames 3 --train
    run 120 python3 $G/wan_ref.py --preset wan1.3b --frames 21 ;;
*) log "unknown step $s" ;;
esac
done
log "$(date -u) done"
# The device tool returns at most 8 files from $OUT: log.txt, bench.jsonl and kernels.tgz stay as
# they are, every other file goes into side.tgz (tests.txt, follow.txt, demo tables, build output, ...);
# the peers' barrier files are spent by now.
rm -f "$BARRIER".*
side=$(cd "$OUT" && find . -maxdepth 1 -type f ! -name log.txt ! -name bench.jsonl ! -name kernels.tgz ! -name side.tgz -printf '%P\n')
if [ -n "$side" ]; then
    (cd "$OUT" && tar czf side.tgz $side && rm -f $side)
fi
