#!/bin/bash
# train.shard on one GPU through NCCL (world size 1): a Wan-1.3B DMD step (student, critic, teacher,
# EMA; random weights; 4,680 tokens; recompute) with train.shard none, optimizer and full, their
# losses step by step and their step times; and RankComm's collectives on real NCCL.
# Here (the development machine), into the git-ignored gpubuild/dist:
#   CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -ldflags="-s -w" -o gpubuild/dist/fewstep ./cmd/fewstep
#   CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go test -c -ldflags="-s -w" -o gpubuild/dist/cuda.test ./kernels/cuda
#   gzip -9 gpubuild/dist/fewstep
# There (the device tool, carry ["gpubuild/dist"]), from the repository root:
#   bash scripts/gpu-dist.sh
# Logs go to $OUT (or gpubuild/dist/out): dist.txt (everything), bench.jsonl.
set -uo pipefail
G=gpubuild/dist LOG=dist.txt
source "${BASH_SOURCE%/*}/gpu-nccl-env.sh" # OUT, L, log, NCCL and the binary (that file says)

# 1. RankComm on real NCCL (every collective vs the host) and the stand-in NCCL's plumbing tests
#    (TESTS: other GPU tests of kernels/cuda too).
(cd kernels/cuda && timeout -k 5 ${T_TEST:-40} ../../$G/cuda.test -test.run "${TESTS:-NCCLRank}" -test.v -test.count=1) >> "$L" 2>&1
log "cuda.test -test.run ${TESTS:-NCCLRank} exit $?"
grep -E "^(--- |ok|FAIL|PASS|panic)" "$L" | tail -8

# 2. Wan-1.3B DMD through NCCL on GPU 0 with train.shard none, optimizer and full.
for sh in ${SHARDS:-none optimizer full}; do
    res=$(timeout -k 5 ${T_BENCH:-90} $G/fewstep bench train --json --objective dmd --preset wan2.1-1.3b --frames 3 --height 60 --width 104 \
        --recompute --devices cuda:0 --shard $sh --warmup 1 --iters ${ITERS:-3} 2>>"$L")
    log "bench train dmd --shard $sh exit $?"
    echo "$res" | grep '^{' >> "$OUT/bench.jsonl"
done
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$L"
import json, sys
rows = {}
for l in open(sys.argv[1] + "/bench.jsonl"):
    r = json.loads(l)
    rows[r.get("shard")] = r
    ms = r.get("metrics_by_step") or []
    print(f"shard {r.get('shard')}: step {r.get('step_ms', float('nan')):.1f} ms (sorted {r.get('step_wall_ms_sorted')}), "
          f"memory {r.get('mem_used_GiB_per_gpu')} GiB {r.get('error', '')}")
    for i, m in enumerate(ms):
        print(f"  step {i+1}: gen_loss {m.get('gen_loss')}, critic_loss {m.get('critic_loss')}")
base = rows.get("none")
for sh in ("optimizer", "full"):
    r = rows.get(sh)
    if not base or not r:
        continue
    worst = 0
    for a, b in zip(base.get("metrics_by_step") or [], r.get("metrics_by_step") or []):
        for k in ("gen_loss", "critic_loss"):
            if k in a and k in b:
                worst = max(worst, abs(a[k] - b[k]) / max(abs(a[k]), 1e-12))
    print(f"shard {sh} vs none: worst relative difference of the losses {worst:.3g} over {len(r.get('metrics_by_step') or [])} steps")
PY
