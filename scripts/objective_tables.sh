#!/usr/bin/env bash
# The distillation tables of the other objectives on the demo teacher (issue 4, must-show 2), on the
# CPU: consistency, dmd+adversarial (DMD2), and odeinit → selfforcing (the causal student, sampled by
# streaming with the KV cache, plus a video twice the training length). Shortened runs (STEPS, COUNT).
# Usage: scripts/objective_tables.sh [OUT]   (from the repository root)
# On a GPU machine without Go: FS=<prebuilt fewstep> FEWSTEP_DEVICE=cuda scripts/objective_tables.sh OUT
# (FEWSTEP_DEVICE sets every job's device key).
set -euo pipefail
OUT=${1:-runs/tables}
STEPS=${STEPS:-300}
COUNT=${COUNT:-64}
T=configs/teacher/diffusion_pytorch_model.safetensors
mkdir -p "$OUT"
fs=${FS:-}
if [ -z "$fs" ]; then # two lines: set -e ignores a failed go build on the left of &&
	go build -o "$OUT/fewstep" ./cmd/fewstep
	fs="$OUT/fewstep"
fi
table() { # name config student sampler [extra eval flags]
	local name=$1 cfg=$2 student=$3 sampler=$4; shift 4
	"$fs" eval --config "$cfg" --teacher "$T" --student "$student" --student-sampler "$sampler" \
		--heldout "$OUT/$name/data/heldout.arrow" --count "$COUNT" --out "$OUT/$name/eval" "$@" 2>/dev/null |
		sed -n '/^distillation table/,$p' | tee "$OUT/$name.table.txt"
}
last() { echo "$1/checkpoints/$(printf 'step-%06d' "$2")/$3.safetensors"; }

"$fs" train --config configs/consistency.yaml --set out_dir="$OUT/consistency" --set train.steps="$STEPS" >"$OUT/consistency.log" 2>&1
table consistency configs/consistency.yaml "$(last "$OUT/consistency" "$STEPS" student)" consistency

"$fs" train --config configs/dmd_adv.yaml --set out_dir="$OUT/dmd_adv" --set train.steps="$STEPS" >"$OUT/dmd_adv.log" 2>&1
table dmd_adv configs/dmd_adv.yaml "$(last "$OUT/dmd_adv" "$STEPS" student)" fewstep

"$fs" data synth --out "$OUT/prompts" --count 256 --heldout 256 --frames 8 --size 16 --text-dim 32 --seed 0 >/dev/null 2>&1
"$fs" data ode-pairs --config configs/odeinit.yaml --teacher "$T" --prompts "$OUT/prompts/train.arrow" \
	--out "$OUT/odepairs/pairs.arrow" --steps 48 --cfg 3 --timesteps 1000,750,500,250 >/dev/null 2>&1
"$fs" train --config configs/odeinit.yaml --set out_dir="$OUT/odeinit" --set data.path="$OUT/odepairs/pairs.arrow" \
	--set train.steps="$STEPS" >"$OUT/odeinit.log" 2>&1
"$fs" train --config configs/selfforcing.yaml --set out_dir="$OUT/selfforcing" \
	--set roles.student.weights="$(last "$OUT/odeinit" "$STEPS" student)" --set train.steps="$STEPS" >"$OUT/selfforcing.log" 2>&1
table selfforcing configs/selfforcing.yaml "$(last "$OUT/selfforcing" "$STEPS" student)" stream --long-frames 16
