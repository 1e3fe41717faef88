#!/usr/bin/env bash
# CPU speed of the Go DiT against the PyTorch reference on the same machine, same shapes, same run.
#   scripts/bench_cpu_peer.sh [tiny] [small]
# Go:      go test -bench 'Forward|TrainStep' in models/ (GOMAXPROCS threads), shapes via FEWSTEP_BENCH_SHAPE
# PyTorch: ../shared/reference/wan_ref.py --preset P --frames F --height H --width W --ctx L --train,
#          fp32 on the CPU with OMP_NUM_THREADS = the Go thread count.
# A train step is, on both sides: v = f(x), loss = mean(v²), backward, AdamW over all parameters.
# Env: THREADS (default nproc), PYTHON (/usr/bin/python3.11), WAN_REF, GO_BENCHTIME (default 5x),
#      PEER_LD_LIBRARY_PATH (e.g. an OpenBLAS libblas.so.3 folder for torch's BLAS; default: the
#      system's libblas.so.3, which on Debian is the reference BLAS unless OpenBLAS is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
PYTHON=${PYTHON:-/usr/bin/python3.11}
WAN_REF=${WAN_REF:-../shared/reference/wan_ref.py}
BT=${GO_BENCHTIME:-5x}
presets=("$@"); [ ${#presets[@]} -eq 0 ] && presets=(tiny small)
declare -A SHAPE=([tiny]="8 8 8 32" [small]="8 16 16 64")   # F H W L (B = 1), as models/bench_test.go

bin=$(mktemp -d)/models.test
go test -c -o "$bin" ./models
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo '?')
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $THREADS threads, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# torch $($PYTHON -c 'import torch; print(torch.__version__)'), BLAS ${PEER_LD_LIBRARY_PATH:-$blas}"
printf "%-6s %-16s %12s %12s %8s %14s %14s %8s %10s %10s\n" preset shape go_fwd_ms torch_fwd_ms ratio go_step_ms torch_step_ms ratio go_allocs go_maxRSS
for p in "${presets[@]}"; do
  read -r F H W L <<<"${SHAPE[$p]}"
  gout=$(FEWSTEP_BENCH_SHAPE="$F,$H,$W,$L" GOMAXPROCS=$THREADS /usr/bin/time -f "maxrss_kb %M" \
    "$bin" -test.run '^$' -test.bench "(Forward|TrainStep)/$p/" -test.benchtime "$BT" -test.benchmem 2>&1)
  gf=$(awk '/BenchmarkForward/ {for(i=1;i<=NF;i++) if($i=="ms/fwd") print $(i-1)}' <<<"$gout")
  gs=$(awk '/BenchmarkTrainStep/ {for(i=1;i<=NF;i++) if($i=="ms/step") print $(i-1)}' <<<"$gout")
  ga=$(awk '/BenchmarkTrainStep/ {for(i=1;i<=NF;i++) if($i=="allocs/op") print $(i-1)}' <<<"$gout")
  rss=$(awk '/maxrss_kb/ {printf "%.0fMiB", $2/1024}' <<<"$gout")
  pout=$(OMP_NUM_THREADS=$THREADS LD_LIBRARY_PATH=${PEER_LD_LIBRARY_PATH:-} /usr/bin/time -f "maxrss_kb %M" \
    "$PYTHON" "$WAN_REF" --preset "$p" --frames "$F" --height "$H" --width "$W" --ctx "$L" --train 2>&1)
  pj=$(grep '^{' <<<"$pout")
  tf=$($PYTHON -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])["fwd_ms"])' "$pj")
  ts=$($PYTHON -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])["train_step_ms"])' "$pj")
  prss=$(awk '/maxrss_kb/ {printf "%.0fMiB", $2/1024}' <<<"$pout")
  printf "%-6s %-16s %12s %12s %8s %14s %14s %8s %10s %10s\n" "$p" "F${F}H${H}W${W}L${L}" "$gf" "$tf" \
    "$(awk -v a="$gf" -v b="$tf" 'BEGIN{printf "%.2f", a/b}')" "$gs" "$ts" \
    "$(awk -v a="$gs" -v b="$ts" 'BEGIN{printf "%.2f", a/b}')" "$ga" "$rss(torch $prss)"
done
echo "# ratio = Go ms / PyTorch ms (< 1: Go faster). load after: $(cut -d' ' -f1-3 /proc/loadavg)"
