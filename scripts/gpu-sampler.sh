#!/bin/bash
# The sampler's GPU check (docs/library.md), one device call from the repository root:
#   bash scripts/gpu-sampler.sh            (with gpubuild/sampler/fewstep.gz and wan_ref.py carried)
# 1. fewstep sample of a Wan-1.3B checkpoint (random weights, model init) at 81 frames of 480p
#    (latents [16, 21, 60, 104], 32,760 tokens), 4 steps, beside the same sampling through wan_ref.py:
#    time per video and peak memory (nvidia-smi every 50 ms; PyTorch's own counters too);
# 2. streaming through the library (bench stream: pipeline.Stream, 3-frame chunks, 4 steps);
# 3. a Diffusers-layout export loaded by scripts/diffusers_wan.py (diffusers' WanTransformer3DModel
#    tree, written from its code) gives fewstep's output (model forward on the GPU).
set -uo pipefail
G=gpubuild/sampler
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
L=$OUT/log.txt
log() { echo "$@" | tee -a "$L"; }
[ -f $G/fewstep.gz ] && gunzip -f $G/fewstep.gz
F=$G/fewstep
chmod +x $F
T=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee -a "$L"
# peak NAME CMD...: runs CMD while sampling the card's used memory; logs the peak (MiB)
peak() {
    name=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/mem_$name.txt" 2>/dev/null &
    mp=$!
    t0=$(date +%s.%N)
    "$@"
    rc=$?
    kill $mp 2>/dev/null; wait $mp 2>/dev/null
    log "{\"phase\": \"$name\", \"rc\": $rc, \"wall_s\": $(awk "BEGIN{print $(date +%s.%N) - $t0}"), \"peak_used_MiB\": $(sort -n "$OUT/mem_$name.txt" | tail -1), \"idle_used_MiB\": $(sort -n "$OUT/mem_$name.txt" | head -1)}"
}
log "+ model init wan2.1-1.3b"
timeout 120 $F model init --preset wan2.1-1.3b --dtype bfloat16 --out $T/wan 2>&1 | tee -a "$L"
cat > $T/wan/recipe.json <<'JSON'
{"format": 1, "objective": "bench", "sampler": "fewstep", "denoising_timesteps": [1000, 750, 500, 250], "shift": 5, "cfg": 1,
 "causal": false, "latent_channels": 16, "frames": 21, "height": 60, "width": 104, "text_len": 512, "text_dim": 4096, "latent_space": "vae"}
JSON
python3 - "$T/emb.safetensors" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from diffusers_wan import save_file
torch.manual_seed(0)
save_file({"context": torch.randn(2, 512, 4096)}, sys.argv[1])
PY
log "+ fewstep sample (2 videos, one at a time; the first includes the warm-up)"
peak sample timeout 150 $F sample --weights $T/wan/diffusion_pytorch_model.safetensors --embeddings $T/emb.safetensors --device cuda \
    --count 2 --batch 1 --out $T/samples --set data.text_len=512 --set device=cuda 2>>"$L" | tee -a "$L"
log "+ wan_ref.py, the same sampling"
peak wan_ref timeout 150 python3 scripts/ref_sample.py --wan-ref $G/wan_ref.py --weights $T/wan/diffusion_pytorch_model.safetensors --emb $T/emb.safetensors 2>>"$L" | tee -a "$L"
log "+ bench stream (pipeline.Stream)"
peak stream timeout 90 $F bench stream --json --preset wan2.1-1.3b --height 60 --width 104 --chunk-frames 3 --chunks 7 --steps 4 --warmup 1 2>>"$L" | tee -a "$L"
log "+ Diffusers layout: the demo teacher and a random small preset, exported with --layout diffusers"
$F export --weights configs/teacher/diffusion_pytorch_model.safetensors --model-config configs/teacher/config.json --layout diffusers \
    --out $T/td --set data.text_len=8 > /dev/null 2>>"$L"
python3 scripts/diffusers_wan.py --export $T/td --fewstep $F --device cuda 2>>"$L" | tee -a "$L"
$F model init --preset small --text-len 64 --dtype float32 --layout diffusers --out $T/sd > /dev/null 2>>"$L"
python3 scripts/diffusers_wan.py --export $T/sd --fewstep $F --device cuda --frames 3 --size 16 2>>"$L" | tee -a "$L"
log "+ bench sample (pipeline.Generate, warm)"
peak bench_sample timeout 90 $F bench sample --json --preset wan2.1-1.3b --frames 21 --height 60 --width 104 --steps 4 --iters 2 --warmup 1 2>>"$L" | tee -a "$L"
log "+ CUDA graphs (pipeline.UseGraphs): small preset, short video, eager vs graph"
timeout 60 $F bench sample --json --preset small --frames 2 --height 32 --width 32 --ctx 64 --steps 4 --iters 5 --warmup 1 2>>"$L" | tee -a "$L"
timeout 60 $F bench sample --json --preset small --frames 2 --height 32 --width 32 --ctx 64 --steps 4 --iters 5 --warmup 1 --graph 2>>"$L" | tee -a "$L"
rm -rf $T
