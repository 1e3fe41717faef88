#!/bin/bash
# GPU training: correctness against the CPU and the training benchmarks, in one go.
#   here (Go toolchain):   scripts/gpu-train-bench.sh prepare
#       gpubuild/ = scripts/gpu-prepare.sh's folder + the objectives test binary + this script
#   GPU machine (device tool, carry ["gpubuild"]), from the repository root:
#       bash gpubuild/gpu-train-bench.sh [run] [steps...]   (G=folder when gpubuild was copied elsewhere)
#   steps (default all, in this order): follow step dmd peer-compile step-recompute dmd-plain selfforcing
#   more: dmd78 (DMD under a 78 GiB card), profile (per-kernel times of fwd+bwd), sf6 sf9 sf12 (Self-Forcing
#   steps of 2, 3, 4 chunks), sf6-78 (2 chunks under a 78 GiB card); PEER_TIMEOUT (s) for peer-compile (torch.compile of the train step is slow)
# Logs under $OUT (or gpubuild/out): train_log.txt, follow.txt (the CPU-vs-GPU test), train.jsonl
# (one JSON line per bench train run).
set -uo pipefail
G=${G:-gpubuild}
stale() { # prints the kernels/cuda/*.cu (under $1) whose fatbin in kernels/cuda/build is not built from them
    local hdrs=$(ls $1/kernels/cuda/*.cuh | LC_ALL=C sort) cu h
    for cu in $1/kernels/cuda/*.cu; do
        h=$(cat "$cu" $hdrs | sha256sum | cut -d' ' -f1)
        grep -q "^$(basename "$cu" .cu).fatbin $h" $1/kernels/cuda/build/MANIFEST || echo "$cu"
    done
}
if [ "${1:-run}" = prepare ]; then
    # Run in the tree whose code the binaries are to hold (e.g. a clone of HEAD); WAN_REF names
    # wan_ref.py when ../shared is not beside it.
    set -e
    cd "$(dirname "$0")/.."
    sh scripts/gpu-prepare.sh
    CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go test -c -ldflags="-s -w" -o $G/objectives.test ./objectives
    gzip -9 $G/objectives.test
    cp scripts/gpu-train-bench.sh $G/
    # Kernel sources whose embedded fatbins are stale travel along and are built on the GPU machine.
    if [ -n "$(stale .)" ]; then
        echo "gpu-train-bench: stale fatbins: $(stale . | tr '\n' ' ')" >&2
        mkdir -p $G/ksrc/kernels/cuda/build $G/ksrc/scripts
        cp kernels/cuda/*.cu kernels/cuda/*.cuh $G/ksrc/kernels/cuda/
        cp scripts/build-kernels.sh $G/ksrc/scripts/
    fi
    git log -1 --format='%H %s' > $G/COMMIT
    du -sh $G
    exit 0
fi
[ "${1:-}" = run ] && shift
steps=${*:-follow step dmd peer-compile step-recompute dmd-plain selfforcing}
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
L=$OUT/train_log.txt
J=$OUT/train.jsonl
log() { echo "$@" | tee -a "$L"; }
for f in fewstep objectives.test; do [ -f $G/$f.gz ] && gunzip -f $G/$f.gz; done
date -u | tee -a "$L"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$L"
python3 -c 'import torch; print("torch", torch.__version__)' 2>&1 | tee -a "$L"

# Kernels: the embedded fatbins, unless prepare found them stale (then built here from gpubuild/ksrc).
log "binaries built from: $(cat $G/COMMIT 2>/dev/null)"
if [ -d $G/ksrc ]; then
    t0=$(date +%s)
    if (cd $G/ksrc && sh scripts/build-kernels.sh ../kernels) >> "$L" 2>&1; then
        export FEWSTEP_CUDA_KERNELS=$PWD/$G/kernels
        log "kernels built with nvcc in $(( $(date +%s) - t0 )) s"
    else
        log "KERNEL BUILD FAILED: using the embedded fatbins"
    fi
fi

bench() { # name timeout args...
    local name=$1 to=$2
    shift 2
    log "+ [$name] fewstep bench train $*"
    local t0=$(date +%s)
    timeout "$to" $G/fewstep bench train --json "$@" 2>>"$L" | tee -a "$J"
    log "  [$name] exit ${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s"
}
W480="--preset wan2.1-1.3b --frames 3 --height 60 --width 104 --ctx 512"
for s in $steps; do
    case $s in
    follow)
        t0=$(date +%s)
        (cd objectives && timeout 150 ../$G/objectives.test -test.run 'TestGPUTrainingFollowsCPU|TestGPURolloutBF16Cache' -test.v -test.count=1) > "$OUT/follow.txt" 2>&1
        log "objectives.test TestGPUTrainingFollowsCPU, TestGPURolloutBF16Cache exit $? in $(( $(date +%s) - t0 )) s"
        grep -E -- "--- (PASS|FAIL|SKIP)|GPU vs CPU|RMS relative|gpu_train_test.go:[0-9]+: .*(differs|GPU:)|selfforcing_gpu_test.go|panic" "$OUT/follow.txt" | head -80 | tee -a "$L" ;;
    step)           bench step 200 $W480 --iters 5 --warmup 2 --peer $G/wan_ref.py ;;
    step-recompute) bench step-recompute 90 $W480 --iters 5 --warmup 2 --recompute ;;
    dmd)            bench dmd 150 $W480 --objective dmd --recompute --mem-limit-gib 79.6 --iters 3 --warmup 1 ;;
    dmd-plain)      bench dmd-plain 90 $W480 --objective dmd --mem-limit-gib 79.6 --iters 2 --warmup 1 ;;
    peer-compile)   bench peer-compile ${PEER_TIMEOUT:-240} $W480 --iters 5 --warmup 2 --peer $G/wan_ref.py --peer-compile ;;
    dmd78)          bench dmd78 150 $W480 --objective dmd --recompute --mem-limit-gib 78 --iters 5 --warmup 1 ;;
    profile) # per-kernel times of one forward and one backward (stderr → the log)
        log "+ [profile] fewstep bench forward $W480 --train --profile"
        timeout 120 $G/fewstep bench forward --json $W480 --train --profile --iters 3 --warmup 1 >> "$J" 2>> "$L"
        log "  [profile] exit $?" ;;
    sf6|sf9|sf12)   f=${s#sf}
                    bench $s 240 --preset wan2.1-1.3b --frames $f --height 60 --width 104 --ctx 512 \
                        --objective selfforcing --chunk-frames 3 --recompute --iters 2 --warmup 1 ;;
    sf6-78)         bench sf6-78 240 --preset wan2.1-1.3b --frames 6 --height 60 --width 104 --ctx 512 \
                        --objective selfforcing --chunk-frames 3 --recompute --mem-limit-gib 78 --iters 2 --warmup 1 ;;
    selfforcing)    bench selfforcing 300 --preset wan2.1-1.3b --frames 21 --height 60 --width 104 --ctx 512 \
                        --objective selfforcing --chunk-frames 3 --recompute --iters 2 --warmup 1 ;;
    *) log "unknown step $s" ;;
    esac
done
date -u | tee -a "$L"
