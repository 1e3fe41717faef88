#!/bin/bash
# The launch side of training on many GPUs, on the GPUs of one machine (docs/multi-gpu.md): the
# per-rank NCCL communicator's GPU tests, the main job's objective through NCCL against the plain
# single-GPU run, and a Wan-1.3B DMD step data parallel with train.shard none, optimizer and full.
# Here (the development machine), into the git-ignored gpubuild/launch:
#   CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -ldflags="-s -w" -o gpubuild/launch/fewstep ./cmd/fewstep
#   CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go test -c -ldflags="-s -w" -o gpubuild/launch/cuda.test ./kernels/cuda
#   gzip -9 gpubuild/launch/fewstep
# There (the device tool, carry ["gpubuild/launch"]), from the repository root:
#   bash scripts/gpu-launch.sh
# Logs go to $OUT (or gpubuild/launch/out): launch.txt (everything), bench.jsonl, metrics-*.jsonl.
set -uo pipefail
G=gpubuild/launch LOG=launch.txt
source "${BASH_SOURCE%/*}/gpu-nccl-env.sh" # OUT, L, log, NCCL and the binary (that file says)

# 1. RankComm on real NCCL (every collective vs the host at this machine's world size), and the
#    machine-independent NCCL tests.
(cd kernels/cuda && timeout -k 5 ${T_TEST:-60} ../../$G/cuda.test -test.run 'NCCLRank|NCCLFake' -test.v -test.count=1) >> "$L" 2>&1
log "cuda.test -test.run NCCLRank|NCCLFake exit $?"
grep -E "^(--- |ok|FAIL|PASS|panic)|nccl_rank_test.go:" "$L" | tail -20

# A device list naming a GPU this machine does not have: a clear error before anything starts.
log "+ fewstep train --devices cuda:0,7: $(timeout 30 $G/fewstep train --config configs/demo.yaml --devices cuda:0,7 --set out_dir=/tmp/launch-bad 2>&1 | tail -1)"

# 2. The main job's objective (configs/demo.yaml: dmd with the ODE-pair regression, shortened):
#    the plain single-GPU run and the same job through NCCL's per-rank path on GPU 0.
J="--config configs/demo.yaml --set train.steps=${STEPS:-40} --set train.log_every=10 --set train.ckpt_every=0 --set sample.count=0 --set data.ode_pairs.count=64"
for m in plain nccl; do
    a="--device cuda"
    [ $m = nccl ] && a="--devices cuda:0"
    t0=$(date +%s%N)
    timeout -k 5 ${T_TRAIN:-120} $G/fewstep train $J $a --set out_dir=/tmp/launch-$m >> "$L" 2>&1
    rc=$?
    log "train ($m: $a) exit $rc in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    cp /tmp/launch-$m/metrics.jsonl "$OUT/metrics-$m.jsonl" 2>/dev/null
done
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$L"
import json, sys
o = sys.argv[1]
rows = {m: [json.loads(l) for l in open(f"{o}/metrics-{m}.jsonl")] for m in ("plain", "nccl")}
worst = 0
for a, b in zip(rows["plain"], rows["nccl"]):
    d = {k: (a[k], b[k]) for k in ("loss", "gen_loss", "critic_loss", "reg_loss") if k in a and k in b}
    worst = max([worst] + [abs(x - y) / max(abs(x), 1e-12) for x, y in d.values()])
    print(f"step {a['step']}: " + ", ".join(f"{k} {x:.6g} vs {y:.6g}" for k, (x, y) in d.items()) + f"  (world {b.get('world')}, global batch {b.get('global_batch')})")
print(f"main job: plain vs NCCL at world size 1: worst relative difference of the losses {worst:.3g} over {min(len(rows['plain']), len(rows['nccl']))} logged steps")
PY

# 3. A Wan-1.3B DMD step (student, critic, teacher, EMA; random weights; 4,680 tokens, recompute)
#    through NCCL on GPU 0 with train.shard none, optimizer and full: the same losses.
for sh in ${SHARDS:-none optimizer full}; do
    res=$(timeout -k 5 ${T_BENCH:-100} $G/fewstep bench train --json --objective dmd --preset wan2.1-1.3b --frames 3 --height 60 --width 104 \
        --recompute --devices cuda:0 --shard $sh --warmup 1 --iters ${ITERS:-2} 2>>"$L")
    log "bench train dmd --shard $sh exit $?"
    echo "$res" | grep '^{' >> "$OUT/bench.jsonl"
done
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$L"
import json, sys
for l in open(sys.argv[1] + "/bench.jsonl"):
    r = json.loads(l)
    ms = r.get("metrics_by_step") or []
    losses = [(m.get("gen_loss"), m.get("critic_loss")) for m in ms if m]
    print(f"shard {r.get('shard')}: step {r.get('step_ms', float('nan')):.1f} ms, memory {r.get('mem_used_GiB_per_gpu')} GiB, "
          f"(gen_loss, critic_loss) by step {losses} {r.get('error', '')}")
PY
