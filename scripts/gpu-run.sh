#!/bin/bash
# The GPU machine's side of scripts/gpu-prepare.sh: run from the repository root.
#   bash gpubuild/gpu-run.sh [tests|bench|quick|all]      (default all; quick = all but torch.compile)
# Logs and results go to $OUT (or gpubuild/out): log.txt, tests.txt, bench.jsonl, kernels.tgz.
set -uo pipefail
mode=${1:-all}
G=gpubuild
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
L=$OUT/log.txt
log() { echo "$@" | tee -a "$L"; }
[ -f $G/fewstep.gz ] && gunzip -f $G/fewstep.gz
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$L"
nvcc --version | tail -2 | tee -a "$L"

# 1. kernels, built from this tree's sources and used by everything below
if ! scripts/build-kernels.sh "$G/kernels" >> "$L" 2>&1; then log "KERNEL BUILD FAILED (see log.txt)"; tail -40 "$L"; fi
export FEWSTEP_CUDA_KERNELS=$PWD/$G/kernels

# 2. tests
if [ "$mode" != bench ]; then
    (cd kernels/cuda && timeout 300 ../../$G/cuda.test -test.v -test.count=1) > "$OUT/tests.txt" 2>&1
    log "cuda.test exit $?"
    (cd kernels/cuda/gputest && timeout 300 ../../../$G/gputest.test -test.v -test.count=1) >> "$OUT/tests.txt" 2>&1
    log "gputest.test exit $?"
    grep -E "^(=== RUN|--- FAIL|FAIL|ok|PASS)|rel error .* >|panic|Error" "$OUT/tests.txt" | grep -v "=== RUN" | head -60 | tee -a "$L"
    grep -E "rel error" "$OUT/tests.txt" | sed 's/^ *//' | sort -u > "$OUT/tolerances.txt"
    # fewstep model vjp --device cuda on the committed PyTorch goldens (wan_ref.py), every tensor
    T=models/testdata
    for v in bidir causal; do
        flag=""; [ $v = causal ] && flag="--chunk-frames 1"   # as dumped (scripts/dump_goldens.py)
        $G/fewstep model vjp --model-config $T/odd.config.json --weights $T/odd.weights.safetensors \
            --inputs $T/odd_$v.inputs.safetensors $flag --device cuda --out $G/vjp_$v.safetensors > /dev/null 2>> "$L" || log "model vjp $v FAILED"
        python3 - $G/vjp_$v.safetensors $T/odd_$v.expect.safetensors <<'PY' | tee -a "$L"
import sys, numpy as np
from safetensors.numpy import load_file
got, want = load_file(sys.argv[1]), load_file(sys.argv[2])
worst = max(((float(np.linalg.norm(got[k].astype(np.float64) - want[k]) / max(np.linalg.norm(want[k].astype(np.float64)), 1e-30)), k)
             for k in want), default=(float("nan"), "-"))
missing = [k for k in want if k not in got]
print("model vjp --device cuda vs PyTorch golden %s: %d tensors, worst rel error %.3g (%s)%s" % (
    sys.argv[2].split("/")[-1], len(want), worst[0], worst[1], ", MISSING %s" % missing if missing else ""))
PY
    done
fi

# 3. benchmarks: ours and the PyTorch peer, same card, same run
if [ "$mode" != tests ]; then
    B=$OUT/bench.jsonl
    : > "$B"
    run() { log "+ $*"; timeout 240 "$@" 2>>"$L" | tee -a "$B"; }
    run $G/fewstep bench forward --json --preset wan2.1-1.3b --frames 3 --height 60 --width 104 --graph --iters 10 --profile
    run $G/fewstep bench forward --json --preset small --frames 2 --height 64 --width 64 --graph --iters 20
    run $G/fewstep bench forward --json --preset wan2.1-1.3b --frames 1 --height 16 --width 32 --graph --iters 20
    run $G/fewstep bench forward --json --preset wan2.1-1.3b --frames 21 --height 60 --width 104 --iters 3 --warmup 1
    run $G/fewstep bench forward --json --preset wan2.1-1.3b --frames 3 --height 60 --width 104 --train --iters 5
    run $G/fewstep bench stream --json --preset wan2.1-1.3b --height 60 --width 104 --chunk-frames 3 --chunks 7 --steps 4 --warmup 1
    run $G/fewstep bench attention --json --tokens 32760 --heads 12 --head-dim 128 --iters 5
    run $G/fewstep bench attention --json --tokens 4680 --heads 12 --head-dim 128 --iters 10
    if [ -f $G/wan_ref.py ]; then
        run python3 $G/wan_ref.py --preset wan1.3b --frames 3
        run python3 $G/wan_ref.py --preset small --frames 2 --height 64 --width 64
        run python3 $G/wan_ref.py --preset wan1.3b --frames 1 --height 16 --width 32
        run python3 $G/wan_ref.py --preset wan1.3b --frames 21
        run python3 $G/wan_ref.py --preset wan1.3b --frames 3 --train
        [ "$mode" = all ] && run python3 $G/wan_ref.py --preset wan1.3b --frames 3 --compile
        [ "$mode" = all ] && run python3 $G/wan_ref.py --preset small --frames 2 --height 64 --width 64 --compile
    fi
    python3 - "$B" <<'PY' | tee -a "$L"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def key(r):
    p = {"wan1.3b": "wan2.1-1.3b"}.get(r.get("preset"), r.get("preset"))
    return (p, r.get("tokens"))
ours = {key(r): r for r in rows if r.get("engine") == "fewstep"}
eager = {key(r): r for r in rows if "compile" in r and not r["compile"] and "train_step_ms" not in r}  # the --train row times its own forward
comp = {key(r): r for r in rows if r.get("compile")}
print("%-14s %7s %12s %12s %12s %12s %9s %9s" % ("preset", "tokens", "ours ms", "eager ms", "ours/graph", "compiled ms", "eager/ours", "comp/ours"))
for k in sorted(set(ours) | set(eager), key=str):
    o, e, c = ours.get(k, {}), eager.get(k, {}), comp.get(k, {})
    om, em, cm = o.get("fwd_ms"), e.get("fwd_ms"), c.get("fwd_ms")
    f = lambda v: "%.2f" % v if v else "-"
    print("%-14s %7s %12s %12s %12s %12s %9s %9s" % (k[0], k[1], f(o.get("fwd_eager_ms", om)), f(em), f(om), f(cm),
          f(em / om) if om and em else "-", f(cm / om) if om and cm else "-"))
for r in rows:
    if "fwd_bwd_ms" in r or "train_step_ms" in r:
        print("%s %s tokens=%s: %s" % (r.get("engine", "wan_ref"), r["preset"], r["tokens"],
              "fwd+bwd %.2f ms" % r["fwd_bwd_ms"] if "fwd_bwd_ms" in r else "fwd+bwd+AdamW %.2f ms" % r["train_step_ms"]))
    if r.get("bench") == "stream":
        print("stream %s: %d latent frames (%d video) in %.1f ms: %.1f latent fps, %.1f video fps, first chunk %.1f ms" % (
              r["preset"], r["latent_frames"], r["video_frames"], r["total_ms"], r["latent_fps"], r["video_fps"], r["first_chunk_ms"]))
    if r.get("op") == "attention":
        print("attention N=%d H=%d hd=%d %s: fwd %.2f ms %.0f TFLOP/s, bwd %s" % (r["tokens"], r["heads"], r["head_dim"], r["dtype"],
              r["fwd_ms"], r["fwd_TFLOPs"], "%.2f ms %.0f TFLOP/s" % (r["bwd_ms"], r["bwd_TFLOPs"]) if "bwd_ms" in r else "-"))
PY
fi
