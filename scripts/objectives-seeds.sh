#!/usr/bin/env bash
# Issue 17, H200 call 2 (README "The other objectives"): the chosen recipes at training seeds 0, 1, 2.
# As run: OUT=DIR bash scripts/objectives-seeds.sh (89 s on one H200). scripts/objective_tables.sh is
# the general form (4 evaluation seeds, 50-step rows, odeinit → selfforcing, README update).
set -uo pipefail
G=${G:-gpubuild/quality}
FS=$G/fewstep
[ -x $FS ] || gunzip -kf $G/fewstep.gz
T=configs/teacher/diffusion_pytorch_model.safetensors
R=/tmp/qruns; mkdir -p $R; O=${OUT:-/tmp/qout}; mkdir -p $O
export FEWSTEP_DEVICE=${FEWSTEP_DEVICE:-cuda}
S=${STEPS:-500}
t0=$(date +%s)
tr() { local n=$1 c=$2; shift 2
  $FS train --config $c --set out_dir=$R/$n --set train.steps=$S --set train.sample_every=0 --set train.ckpt_every=$S "$@" > $R/$n.log 2>&1 || echo "TRAIN $n FAILED: $(tail -2 $R/$n.log)"; }
ck() { echo "$R/$1/checkpoints/$(printf 'step-%06d' $S)/${2:-student}.safetensors"; }
$FS data synth --out $R/held --count 16 --heldout 1024 --frames 8 --size 16 --text-dim 32 --seed 0 > /dev/null 2>&1
EV="--teacher $T --heldout $R/held/heldout.arrow ${EVX:---precise --seeds 2} --fd-blocks --batch 512 --set eval.teacher_steps=0"
DMD="--set roles.student.lr=2e-4 --set roles.critic.lr=4e-4 --set roles.student.ema_decay=0.99 --set roles.student.ema_start=100 --set params.regression_weight=0 --set params.cfg=1"
( for s in 0 1 2; do tr c$s configs/consistency.yaml --set seed=$s --set roles.student.lr=1e-4 & done; wait
  echo "consistency trained $(( $(date +%s) - t0 )) s"
  $FS eval --config configs/consistency.yaml $EV --teacher-cfg 3 --student-sampler consistency --out $R/T_c \
    --student $(ck c0) --students c1=$(ck c1) --students c2=$(ck c2) \
    --students c0ema=$(ck c0 ema) --students c1ema=$(ck c1 ema) --students c2ema=$(ck c2 ema) > $O/T_c.txt 2>$R/T_c.err
  cp $R/T_c/table.json $O/T_c.json; echo "consistency table $(( $(date +%s) - t0 )) s"; cat $O/T_c.txt ) &
( for s in 0 1 2; do tr a$s configs/dmd_adv.yaml --set seed=$s --set params.cfg=1 &
    tr d$s configs/dmd.yaml --set seed=$s $DMD & done; wait
  echo "dmd trained $(( $(date +%s) - t0 )) s"
  $FS eval --config configs/dmd_adv.yaml $EV --teacher-cfg 1 --student-sampler fewstep --out $R/T_a \
    --students adv0=$(ck a0 ema) --students adv1=$(ck a1 ema) --students adv2=$(ck a2 ema) \
    --students dmd0=$(ck d0 ema) --students dmd1=$(ck d1 ema) --students dmd2=$(ck d2 ema) > $O/T_a.txt 2>$R/T_a.err
  cp $R/T_a/table.json $O/T_a.json; echo "dmd table $(( $(date +%s) - t0 )) s"; cat $O/T_a.txt ) &
wait
for n in c0 a0 d0; do tail -1 $R/$n.log; done
for n in $R/*/metrics.jsonl; do d=$(basename $(dirname $n)); tail -1 $n > $O/$d.last.json; done
echo "all done $(( $(date +%s) - t0 )) s"
