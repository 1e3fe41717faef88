#!/usr/bin/env bash
# CPU speed of the Go DiT against the PyTorch reference on the same machine, same shapes, same run.
#   scripts/bench_cpu_peer.sh [tiny] [small]
# Go:      go test -bench 'Forward|TrainStep' in models/ (GOMAXPROCS = THREADS), shape via FEWSTEP_BENCH_SHAPE
# PyTorch: ../shared/reference/wan_ref.py --preset P --frames F --height H --width W --ctx L --train,
#          fp32 on the CPU with OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = THREADS.
# A train step is, on both sides: v = f(x), loss = mean(v²), backward, AdamW over all parameters.
# Go and PyTorch run alternately REPEAT times; each figure is the best (minimum) over the repeats, so a
# machine shared with other work penalizes neither side more than the other.
# Env: THREADS (default nproc), REPEAT (default 3), GO_BENCHTIME (default 5x), PYTHON (/usr/bin/python3.11),
#      WAN_REF (../shared/reference/wan_ref.py), PEER_LD_LIBRARY_PATH (a folder with another
#      libblas.so.3 for torch, e.g. OpenBLAS's; default: the system's libblas.so.3, which on Debian
#      is the unoptimized reference BLAS unless OpenBLAS is installed),
#      METRIC=cpu: compare process CPU time per forward / step instead of wall time (Go's cpu-ms
#      metrics against scripts/wan_ref_cpu.py, which times wan_ref.py's model the same way) — the
#      meaningful figure on a machine shared with other work, with THREADS=1;
#      PROFILE=1: also a CPU profile of the Go train step per preset (/tmp/fewstep_<preset>.prof), top ops printed.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
REPEAT=${REPEAT:-3}
PYTHON=${PYTHON:-/usr/bin/python3.11}
WAN_REF=${WAN_REF:-../shared/reference/wan_ref.py}
BT=${GO_BENCHTIME:-5x}
METRIC=${METRIC:-wall}
presets=("$@"); [ ${#presets[@]} -eq 0 ] && presets=(tiny small)
declare -A SHAPE=([tiny]="8 8 8 32" [small]="4 16 16 64")   # F H W L (B = 1), as models/bench_test.go

bin=$(mktemp -d)/models.test
go test -c -o "$bin" ./models
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo '?')
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $THREADS threads, load $(cut -d' ' -f1-3 /proc/loadavg), best of $REPEAT"
echo "# metric: $METRIC time"
echo "# torch $($PYTHON -c 'import torch; print(torch.__version__)'), BLAS ${PEER_LD_LIBRARY_PATH:-$blas}"
printf "%-6s %-14s %10s %10s %7s %11s %11s %7s %9s %9s %9s\n" preset shape go_fwd torch_fwd ratio go_step torch_step ratio go_allocs go_rss torch_rss
minf() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="" || b+0 < a+0) print b; else print a }'; }
field() { awk -v k="$2" -v u="$3" "/$1/"' {for(i=1;i<=NF;i++) if($i==u) print $(i-1)}' <<<"$4"; }
for p in "${presets[@]}"; do
  read -r F H W L <<<"${SHAPE[$p]}"
  gf= gs= tf= ts= ga= grss= trss=
  for r in $(seq "$REPEAT"); do
    gout=$(FEWSTEP_BENCH_SHAPE="$F,$H,$W,$L" GOMAXPROCS=$THREADS /usr/bin/time -f "maxrss_kb %M" \
      "$bin" -test.run '^$' -test.bench "(Forward|TrainStep)/$p/" -test.benchtime "$BT" -test.benchmem 2>&1)
    pre=; [ "$METRIC" = cpu ] && pre=cpu-
    gf=$(minf "$gf" "$(field BenchmarkForward x ${pre}ms/fwd "$gout")")
    gs=$(minf "$gs" "$(field BenchmarkTrainStep x ${pre}ms/step "$gout")")
    ga=$(field BenchmarkTrainStep x allocs/op "$gout")
    grss=$(awk '/maxrss_kb/ {printf "%.0fMiB", $2/1024}' <<<"$gout")
    if [ "$METRIC" = cpu ]; then
      peer=(scripts/wan_ref_cpu.py --ref "$WAN_REF"); kf=fwd_cpu_ms; ks=train_step_cpu_ms
    else
      peer=("$WAN_REF" --train); kf=fwd_ms; ks=train_step_ms
    fi
    pout=$(OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS LD_LIBRARY_PATH=${PEER_LD_LIBRARY_PATH:-} /usr/bin/time -f "maxrss_kb %M" \
      "$PYTHON" "${peer[@]}" --preset "$p" --frames "$F" --height "$H" --width "$W" --ctx "$L" 2>&1)
    pj=$(grep '^{' <<<"$pout")
    tf=$(minf "$tf" "$($PYTHON -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])[sys.argv[2]])' "$pj" $kf)")
    ts=$(minf "$ts" "$($PYTHON -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])[sys.argv[2]])' "$pj" $ks)")
    trss=$(awk '/maxrss_kb/ {printf "%.0fMiB", $2/1024}' <<<"$pout")
  done
  printf "%-6s %-14s %10s %10s %7s %11s %11s %7s %9s %9s %9s\n" "$p" "F${F}H${H}W${W}L${L}" "$gf" "$tf" \
    "$(awk -v a="$gf" -v b="$tf" 'BEGIN{printf "%.2f", a/b}')" "$gs" "$ts" \
    "$(awk -v a="$gs" -v b="$ts" 'BEGIN{printf "%.2f", a/b}')" "$ga" "$grss" "$trss"
done
if [ -n "${PROFILE:-}" ]; then
  for p in "${presets[@]}"; do
    read -r F H W L <<<"${SHAPE[$p]}"
    FEWSTEP_BENCH_SHAPE="$F,$H,$W,$L" GOMAXPROCS=$THREADS "$bin" -test.run '^$' -test.bench "TrainStep/$p/" \
      -test.benchtime "$BT" -test.cpuprofile "/tmp/fewstep_$p.prof" >/dev/null
    echo "# $p train step, CPU profile /tmp/fewstep_$p.prof (cumulative):"
    go tool pprof -top -cum -nodecount 80 "$bin" "/tmp/fewstep_$p.prof" 2>/dev/null |
      grep -E 'cpuDevice\)\.[A-Za-z]+$|gonum\.Implementation\.Sgemm$' | head -16
  done
fi
echo "# times in ms; ratio = Go / PyTorch (< 1: Go faster); rss = peak resident memory of the whole process. load after: $(cut -d' ' -f1-3 /proc/loadavg)"
