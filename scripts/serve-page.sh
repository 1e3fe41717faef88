#!/bin/bash
# The server's page in headless Chromium (docs/serve.md): a causal student (the shipped teacher with
# selfforcing's recipe, 2-frame chunks) served on loopback, the page opened with a caption, and a
# screenshot after the stream; the DOM is checked for the frames and the chunk log.
#   scripts/serve-page.sh [OUT.png]          (needs chromium: apt-get install -y chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-serve-page.png}
T=$(mktemp -d)
go build -o $T/fewstep ./cmd/fewstep
$T/fewstep export --weights configs/teacher/diffusion_pytorch_model.safetensors --config configs/demo.yaml \
    --set objective=selfforcing --set 'params={}' --set model.chunk_frames=2 --out $T/export > /dev/null
$T/fewstep serve --model $T/export --addr 127.0.0.1:18080 > $T/serve.log 2>&1 &
pid=$!
trap 'kill $pid; rm -rf $T' EXIT
for i in $(seq 50); do curl -sf 127.0.0.1:18080/healthz > /dev/null && break; sleep 0.1; done
url='http://127.0.0.1:18080/?caption=a+blue+square+moving+down&autostart=1&frames=16'
flags="--headless --no-sandbox --disable-gpu --disable-background-networking --disable-dev-shm-usage --hide-scrollbars --window-size=900,900 --virtual-time-budget=15000"
chromium $flags --screenshot="$out" "$url" > /dev/null 2>&1
dom=$(chromium $flags --dump-dom "$url" 2>/dev/null)
frames=$(grep -o 'data:image/png' <<< "$dom" | wc -l)
chunks=$(grep -o 'chunk [0-9]* (frames' <<< "$dom" | wc -l)
echo "page: $frames PNG frames in the DOM, $chunks chunks logged, done event: $(grep -c 'done: ' <<< "$dom"); screenshot $out"
[ "$chunks" -eq 8 ] && [ "$frames" -ge 16 ]
