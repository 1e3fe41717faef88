#!/usr/bin/env bash
# The distillation tables of the other objectives on the demo teacher (issue 17): consistency,
# dmd + adversarial (DMD2) beside dmd alone at the same guidance and recipe, and odeinit →
# selfforcing (the causal student streamed with its KV cache, plus a video 4× the training length)
# beside the bidirectional dmd student at the same guidance. Each job at every training seed of
# SEEDS; each table has the teacher at the guidance its students were distilled from and unguided
# (fewstep eval takes it from the job's params.cfg), and measures with `fewstep eval --precise`
# (512 prompts against the 512 other videos of a 1024-video held-out split, 4 evaluation seeds,
# mean ± std) and --fd-blocks. The tables go into README.md between the objective-tables markers
# (README=none to skip).
# Usage: scripts/objective_tables.sh [OUT]   (from the repository root)
# On a GPU machine without Go: FS=<prebuilt fewstep> FEWSTEP_DEVICE=cuda PAR=1 scripts/objective_tables.sh OUT
# (FEWSTEP_DEVICE sets every job's device key; PAR=1 trains the seeds side by side).
# Each group's table is made as soon as its students are trained (the groups run side by side with
# PAR=1), so the causal chain (ode pairs → odeinit → selfforcing → streamed table), the longest, sets
# the wall time. MORE=N (1000) trains the consistency, dmd + adversarial and dmd jobs on to step N
# (checkpoints at STEPS and N: the schedules are constant, so the STEPS checkpoint is the STEPS-step
# job) and adds a table of the step-N students: does training longer help, at every seed?
# CSTEPS and CMORE (default STEPS and MORE) set the consistency group's two checkpoints apart; CSET
# adds --set flags to its jobs (e.g. CSET="--set params.cfg=5": the tables then show the teacher at w = 5).
# TABLES=gan2 is DMD2's two-stage schedule (its ImageNet model of FID 1.28: dmd alone first, then the
# GAN added from that checkpoint at a learning rate 4× lower): per seed dmd alone for STEPS steps
# (s1dmd), then from its student and critic G2STEPS more steps of dmd + GAN (g2adv) and, as the
# control from the same checkpoint, of dmd alone (g2dmd), both at lr/4; the table has all three.
# TABLES=sft is Self-Forcing without the ODE initialisation: per seed selfforcing.yaml started from the
# teacher's weights instead of odeinit's checkpoint (sft<seed>), streamed as the causal table (is the
# initialisation what holds the causal student back?). LONG (32) is the causal table's long video in
# latent frames (LONG=0: none). SF2STEPS=N adds to the causal group DMD2's second stage for the causal
# student: per seed N more selfforcing steps from the SSTEPS student and critic at a 4× lower learning
# rate, the EMA anew (sf2<seed>; the schedule that lowered every dmd student's 4-step FD, table 6).
# SSET adds --set flags to the causal group's selfforcing jobs (and their second stage, SF2STEPS) and SNAME (selfforcing) names them, e.g.
# SNAME=sfreg SSET="--set params.regression_weight=1 --set data.path=OUT/odepairs/pairs.arrow" (DMD's
# regression on the ODE pairs, which the jobs then read as their data; OUT/ is replaced by the output folder).
# TABLES=causal (or consistency, adversarial, gan2, sft) makes only that group's table; TABLES= (empty) makes
# none and only gathers the OUT/*.table.txt there are (e.g. made on two machines) into OUT/tables.md
# and the README.
set -euo pipefail
OUT=${1:-runs/tables}
STEPS=${STEPS:-500}     # consistency, dmd + adversarial, dmd
OSTEPS=${OSTEPS:-400}   # odeinit (configs/odeinit.yaml's train.steps)
SSTEPS=${SSTEPS:-300}   # selfforcing from odeinit's checkpoint (configs/selfforcing.yaml's)
MORE=${MORE-1000}       # consistency's recipe (configs/consistency.yaml); MORE= (empty) stops at STEPS
SEEDS=${SEEDS:-0 1 2}
CSTEPS=${CSTEPS:-$STEPS} # consistency's first table
CMORE=${CMORE-$MORE}     # and its second
CROLE=${CROLE:-student}  # the consistency students' weights the tables sample: student, or ema (with params.target_decay)
G2STEPS=${G2STEPS:-500}  # gan2's second stage
TABLES=${TABLES-causal consistency adversarial} # the tables to make (each group trains its own jobs)
PROMPTS=${PROMPTS:-512} # prompts of the causal student's ODE pairs
LONG=${LONG:-32}        # the causal table's long video, latent frames (0: none)
SF2STEPS=${SF2STEPS:-}  # N: the causal students' second stage at lr/4 (sf2<seed>)
SNAME=${SNAME:-selfforcing} # the causal students' job prefix
SSET=${SSET:-}          # more --set flags for them; OUT/ in them is read as the output folder
SSET=${SSET//OUT\//$OUT/}
EVAL=${EVAL:---precise --fd-blocks --batch 256}
README=${README:-README.md}
T=configs/teacher/diffusion_pytorch_model.safetensors
mkdir -p "$OUT"
readme() { # OUT/tables.md into the README's block; "@@keep **Table N.**" lines take that table from the block as it was
	python3 - "$README" "$OUT/tables.md" <<'PY'
import re, sys
readme, tables = sys.argv[1], sys.argv[2]
t = open(tables).read()
s = open(readme).read() if readme != "none" else ""
b, e = "<!-- objective-tables:begin -->", "<!-- objective-tables:end -->"
if readme != "none" and (b not in s or e not in s):
    sys.exit(f"{readme}: no {b} … {e} block")
old = {}
if b in s and e in s:
    block = s[s.index(b) + len(b):s.index(e)]
    parts = re.split(r"(?m)^(?=\*\*Table \d+\.\*\*)", block)
    for p in parts:
        m = re.match(r"\*\*Table \d+\.\*\*", p)
        if m:
            old[m.group(0)] = p.rstrip("\n") + "\n"
t = re.sub(r"(?m)^@@keep (.*)\n", lambda m: old.get(m.group(1), ""), t)
open(tables, "w").write(t)
if readme != "none":
    i, j = s.index(b) + len(b), s.index(e)
    open(readme, "w").write(s[:i] + "\n" + t + s[j:])
PY
}
for g in $TABLES; do
	case $g in causal | consistency | adversarial | gan2 | sft) ;; *) echo "TABLES: unknown table $g (causal, consistency, adversarial, gan2, sft)" >&2 && exit 2 ;; esac
done
fs=${FS:-}
if [ -z "$fs" ] && [ -n "$TABLES" ]; then # two lines: set -e ignores a failed go build on the left of &&
	go build -o "$OUT/fewstep" ./cmd/fewstep
	fs="$OUT/fewstep"
fi
t0=$(date +%s)
say() { echo "[$(($(date +%s) - t0)) s] $*" >&2; }
bg() { if [ "${PAR:-0}" = 1 ]; then "$@" & else "$@"; fi; }
train() { # name config steps checkpoint-interval [--set ...]
	local name=$1 cfg=$2 n=$3 every=$4; shift 4
	"$fs" train --config "$cfg" --set out_dir="$OUT/$name" --set train.steps="$n" --set train.ckpt_every="$every" \
		--set train.sample_every=0 "$@" >"$OUT/$name.log" 2>&1 || { echo "train $name failed: $OUT/$name.log" >&2; return 1; }
	say "trained $name"
}
ck() { # job role [step]
	echo "$OUT/$1/checkpoints/$(printf 'step-%06d' "${3:-$STEPS}")/$2.safetensors"
}
table() { # name config sampler [eval flags...]: the table of the students named by --students
	local name=$1 cfg=$2 sampler=$3; shift 3
	"$fs" eval --config "$cfg" --teacher "$T" --heldout "$OUT/held/heldout.arrow" --student-sampler "$sampler" \
		--out "$OUT/$name" $EVAL "$@" 2>"$OUT/$name.eval.log" | sed -n '/^distillation table/,/table.txt/p' | grep -v 'table.txt' >"$OUT/$name.table.txt" ||
		{ echo "eval $name failed: $OUT/$name.eval.log" >&2; return 1; }
	say "table $name"
}
students() { # prefix role [step]: --students PREFIX<seed>=checkpoint for every seed
	for s in $SEEDS; do printf -- '--students %s%s=%s ' "$1" "$s" "$(ck "$1$s" "$2" "${3:-}")"; done
}
n=${MORE:-$STEPS}

[ -z "$TABLES" ] || "$fs" data synth --out "$OUT/held" --count 16 --heldout-count 1024 --frames 8 --size 16 --text-dim 32 --seed 0 >/dev/null 2>&1
W=$(sed -n 's/^ *cfg: *\([0-9.]*\).*/\1/p' configs/selfforcing.yaml | head -1) # the causal student's guidance
# dmd alone with dmd_adv's recipe (lrs, EMA, guidance) and no regression: the GAN's control, and
# the bidirectional student of the same guidance for the streamed one
DMD="--set params.cfg=$W --set params.regression_weight=0 --set roles.student.lr=2e-4 --set roles.critic.lr=4e-4 --set roles.student.ema_decay=0.99 --set roles.student.ema_start=100"

causal1() { # odeinit, then selfforcing from its checkpoint, at seed $1
	train odeinit$1 configs/odeinit.yaml "$OSTEPS" "$OSTEPS" --set seed="$1" --set data.path="$OUT/odepairs/pairs.arrow" &&
		train $SNAME$1 configs/selfforcing.yaml "$SSTEPS" "$SSTEPS" --set seed="$1" --set roles.student.weights="$(ck odeinit$1 student "$OSTEPS")" \
			$SSET || return 1
	[ -z "$SF2STEPS" ] || train sf2$1 configs/selfforcing.yaml "$SF2STEPS" "$SF2STEPS" --set seed="$1" \
		--set roles.student.weights="$(ck $SNAME$1 student "$SSTEPS")" --set roles.critic.weights="$(ck $SNAME$1 critic "$SSTEPS")" \
		--set roles.student.lr=5e-5 --set roles.critic.lr=1e-4 --set roles.student.ema_start=0 $SSET
}
ready() { # prefix role: wait until every seed's STEPS checkpoint exists (written whole, then renamed) or no job runs
	local s
	for s in $SEEDS; do
		until [ -f "$(ck "$1$s" "$2")" ] || [ -z "$(jobs -rp)" ]; do sleep 2; done
	done
}
causal() { # ODE pairs, then per seed odeinit → selfforcing from its checkpoint, then the streamed table
	"$fs" data synth --out "$OUT/prompts" --count "$PROMPTS" --heldout-count 16 --frames 8 --size 16 --text-dim 32 --seed 0 >/dev/null 2>&1
	"$fs" data ode-pairs --config configs/odeinit.yaml --teacher "$T" --prompts "$OUT/prompts/train.arrow" \
		--out "$OUT/odepairs/pairs.arrow" --steps 48 --cfg "$W" --timesteps 1000,750,500,250 --batch 64 >"$OUT/odepairs.log" 2>&1
	say "ode pairs"
	for s in $SEEDS; do bg causal1 "$s"; done
	wait
	table $SNAME configs/selfforcing.yaml stream --long-frames "$LONG" $(students $SNAME ema "$SSTEPS") \
		$([ -z "$SF2STEPS" ] || students sf2 ema "$SF2STEPS")
}
sft() { # selfforcing from the teacher's weights (no odeinit), then its streamed table
	local s
	for s in $SEEDS; do bg train sft$s configs/selfforcing.yaml "$SSTEPS" "$SSTEPS" --set seed="$s" --set roles.student.weights="$T"; done
	wait
	table sft configs/selfforcing.yaml stream $(students sft ema "$SSTEPS")
}
consistency() {
	local STEPS=$CSTEPS MORE=$CMORE s
	for s in $SEEDS; do bg train consistency$s configs/consistency.yaml "${MORE:-$STEPS}" "$STEPS" --set seed="$s" ${CSET:-}; done
	ready consistency student # with MORE, the table of the STEPS checkpoints while training goes on
	table consistency configs/consistency.yaml consistency $(students consistency "$CROLE")
	wait
	[ -z "$MORE" ] || table consistency_more configs/consistency.yaml consistency $(students consistency "$CROLE" "$MORE")
}
adversarial() {
	for s in $SEEDS; do
		bg train adv$s configs/dmd_adv.yaml "$n" "$STEPS" --set seed="$s"
		bg train dmd$s configs/dmd.yaml "$n" "$STEPS" --set seed="$s" $DMD
	done
	ready adv ema
	ready dmd ema
	table adv configs/dmd_adv.yaml fewstep $(students adv ema) $(students dmd ema)
	wait
	[ -z "$MORE" ] || table adv_more configs/dmd_adv.yaml fewstep $(students adv ema "$MORE") $(students dmd ema "$MORE")
}
gan2s() { # seed: stage 1 (dmd alone), then stage 2 from its student and critic, with and without the GAN
	# (configs/dmd_adv_stage1.yaml and dmd_adv_stage2.yaml are these jobs: the same resolved job as
	# dmd.yaml with $DMD, and dmd_adv.yaml with stage 2's learning rates, EMA and weights)
	local s=$1 lr="--set roles.student.lr=5e-5 --set roles.critic.lr=1e-4 --set roles.student.ema_start=0"
	train s1dmd$s configs/dmd_adv_stage1.yaml "$STEPS" "$STEPS" --set seed="$s" || return 1
	local w="--set roles.student.weights=$(ck s1dmd$s student) --set roles.critic.weights=$(ck s1dmd$s critic)"
	bg train g2adv$s configs/dmd_adv_stage2.yaml "$G2STEPS" "$G2STEPS" --set seed="$s" $w
	bg train g2dmd$s configs/dmd.yaml "$G2STEPS" "$G2STEPS" --set seed="$s" $DMD $w $lr # the control: no GAN
	wait
}
gan2() {
	for s in $SEEDS; do bg gan2s "$s"; done
	wait
	table gan2 configs/dmd_adv.yaml fewstep $(students s1dmd ema) $(students g2adv ema "$G2STEPS") $(students g2dmd ema "$G2STEPS")
}
for g in $TABLES; do bg "$g"; done
wait

section() { # title name [objective_verdict.py flags]: the table, then the must-show read off it
	# (a table not in OUT is kept from the README as it is there: readme)
	[ -s "$OUT/$2.table.txt" ] || { echo "@@keep ${1%%\*\* *}**" && return 0; }
	local title=$1 name=$2
	shift 2
	echo "$title"
	echo '```'
	cat "$OUT/$name.table.txt"
	python3 scripts/objective_verdict.py "$OUT/$name/table.json" "$@"
	echo '```'
}
{
	section "**Table 1.** consistency (multistep consistency sampling), training seeds $SEEDS, $CSTEPS steps each:" consistency
	section "**Table 2.** dmd + adversarial (DMD2: the GAN head on the critic's features; the student's EMA) and dmd alone with the same recipe, training seeds $SEEDS, $STEPS steps each:" adv --vs adv:dmd
	section "**Table 3.** odeinit → selfforcing (the causal student streamed chunk by chunk with the KV cache; EMA; the bidirectional dmd student at the same guidance is the table above's dmd rows), training seeds $SEEDS, $OSTEPS + $SSTEPS steps, and (last rows) the streamed video 4× the training length; NFE counts every network call, cache refreshes included:" selfforcing
	section "**Table 4.** consistency trained on to $CMORE steps (the same jobs):" consistency_more
	section "**Table 5.** dmd + adversarial and dmd alone trained on to $MORE steps (the same jobs):" adv_more --vs adv:dmd
	section "**Table 6.** DMD2's two-stage schedule: dmd alone for $STEPS steps (s1dmd), then $G2STEPS more steps from its student and critic at a 4× lower learning rate with the GAN (g2adv) and without (g2dmd, the control), training seeds $SEEDS:" gan2 --vs g2adv:g2dmd
	# consistency_2000: the consistency_more table of a run with CSTEPS=1000 CMORE=2000, kept under this name
	section "**Table 7.** consistency trained on to 2000 steps (a second run of the consistency jobs, CSTEPS=1000 CMORE=2000; its 1000-step students reproduce table 4 within the spreads):" consistency_2000
	# consistency_w5: the consistency table of a run with CSTEPS=500 CMORE= CSET="--set params.cfg=5" (configs/consistency_w5.yaml)
	section "**Table 8.** consistency distilled from the teacher at w = 5 (configs/consistency_w5.yaml with Euler's teacher step, \`solver: euler\`), training seeds 0 1 2, 500 steps each, trained and evaluated on the CPU (2 evaluation seeds):" consistency_w5
	# consistency_w4, consistency_w4_1000: the consistency and consistency_more tables of a CPU run with
	# CSTEPS=500 CMORE=1000 CSET="--set params.cfg=4"; selfforcing_sf2: the causal tables of two CPU runs with
	# SF2STEPS=300 LONG=0 (eval.steps [2, 4]), SEEDS=0 in one and SEEDS="1 2" in the other, joined by
	# `fewstep eval --merge A/selfforcing/table.json --merge B/selfforcing/table.json --out OUT/selfforcing_sf2`
	# (its table.txt is OUT/selfforcing_sf2.table.txt; the merge refuses teacher rows that differ); kept under these names
	section "**Table 9.** consistency distilled from the teacher at w = 4, training seeds 0 1 2, 500 steps each, trained and evaluated on the CPU (2 evaluation seeds):" consistency_w4
	section "**Table 10.** the same consistency jobs (w = 4) trained on to 1000 steps:" consistency_w4_1000
	section "**Table 11.** odeinit → selfforcing (table 3's jobs, reproduced exactly on the CPU) and DMD2's second stage for it (sf2: 300 more steps from its student and critic at lr/4, the EMA anew), training seeds 0 1 2, k = 2 and 4, CPU, 2 evaluation seeds:" selfforcing_sf2 --vs sf2:selfforcing
	# consistency_w5_1000: the consistency table of a CPU run with CSTEPS=1000 CMORE= CSET="--set params.cfg=5" (table 8's jobs trained straight to 1000 steps), kept under this name
	section "**Table 12.** consistency distilled from the teacher at w = 5 (configs/consistency_w5.yaml with Euler's teacher step) trained on to 1000 steps, training seeds 0 1 2, trained and evaluated on the CPU (2 evaluation seeds):" consistency_w5_1000
	# consistency_w5_heun: the consistency table of `fewstep train --config configs/consistency_w5.yaml --set params.solver=heun`
	# at seeds 0 1 2 (= TABLES=consistency CSTEPS=500 CMORE= CSET="--set params.cfg=5 --set params.solver=heun"), kept under this name
	section "**Table 13.** consistency distilled from the teacher at w = 5 with Heun's teacher step (configs/consistency_w5.yaml, \`solver: heun\`), training seeds 0 1 2, 500 steps each, trained and evaluated on the CPU (2 evaluation seeds):" consistency_w5_heun
	# selfforcing_reg: the causal table of SNAME=sfreg SSET="--set params.regression_weight=1 --set data.path=OUT/odepairs/pairs.arrow"
	# (LONG=0, eval.steps [2, 4]), kept under this name
	section "**Table 14.** odeinit → selfforcing with DMD's regression on the teacher's ODE pairs (\`regression_weight: 1\`, the jobs reading their prompts from the ODE pairs; table 3's jobs otherwise), training seeds 0 1 2, k = 2 and 4, CPU, 2 evaluation seeds:" selfforcing_reg
	# selfforcing_reg2: the sf2 rows of a causal run with SNAME=sfreg SSET as table 14's and SF2STEPS=300, the sf2 jobs given
	# the same SSET (configs/selfforcing_reg_stage2.yaml), evaluated alone (eval.steps [2, 4]), kept under this name
	section "**Table 15.** DMD2's second stage for table 14's students (configs/selfforcing_reg_stage2.yaml: 300 more steps from their student and critic at lr/4, the EMA anew, the regression kept), training seeds 0 1 2, k = 2 and 4, CPU, 2 evaluation seeds:" selfforcing_reg2
	# selfforcing_reg2_600: table 15's jobs resumed to 600 steps (configs/selfforcing_reg_stage2.yaml), kept under this name
	section "**Table 16.** table 15's second stage trained on to 600 steps (configs/selfforcing_reg_stage2.yaml), training seeds 0 1 2, k = 2 and 4, CPU, 2 evaluation seeds:" selfforcing_reg2_600
	# consistency_w5_target: the consistency table of table 13's jobs with params.target_decay=0.95 and
	# roles.student.ema_decay=0.99 (configs/consistency_w5.yaml now), their ema sampled (CROLE=ema), kept under this name
	section "**Table 17.** consistency distilled from the teacher at w = 5 (configs/consistency_w5.yaml: Heun's teacher step, the target an EMA of its own at 0.95, the sampled EMA at 0.99; ctd_S: training seed S), 500 steps each, trained and evaluated on the CPU (2 evaluation seeds):" consistency_w5_target
	# selfforcing_reg2_750, selfforcing_reg2_750_s4: table 16's jobs resumed to 750 steps (configs/selfforcing_reg_stage2.yaml
	# now), evaluated at k = 1, 2, 4 with 2 and with 4 evaluation seeds, kept under these names
	section "**Table 18.** table 16's second stage trained on to 750 steps (configs/selfforcing_reg_stage2.yaml, the recipe), training seeds 0 1 2, k = 1, 2 and 4, CPU, 2 evaluation seeds:" selfforcing_reg2_750
	section "**Table 19.** table 18's students at 4 evaluation seeds (the two of table 18 and two more):" selfforcing_reg2_750_s4
} >"$OUT/tables.md"
readme
echo "tables: $OUT/tables.md"
