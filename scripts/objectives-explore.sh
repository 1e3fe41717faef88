#!/usr/bin/env bash
# Issue 17, H200 call 1 (docs/objectives-diagnosis.md): recipe variants of consistency, dmd + adversarial,
# dmd and odeinit → selfforcing at training seed 0, 500 steps, side by side on one card, then fair
# tables (teacher at w = 1 and 3) with --precise --seeds 2 --fd-blocks. As run: from a checkout with
# the fewstep binary at gpubuild/quality/fewstep(.gz): OUT=DIR bash scripts/objectives-explore.sh
# (it timed out at 240 s inside the selfforcing table; the other two tables are in the doc). Its
# variants are relative to configs/ as they were before this issue (consistency lr 5e-4, dmd_adv and
# selfforcing at w = 3): git show 335a297:configs/NAME.yaml.
set -uo pipefail
G=${G:-gpubuild/quality}
FS=$G/fewstep
T=configs/teacher/diffusion_pytorch_model.safetensors
O=${OUT:-/tmp/q}/x
mkdir -p $O
export FEWSTEP_DEVICE=${FEWSTEP_DEVICE:-cuda}
S=${STEPS:-500}
OS=${OSTEPS:-400}
NP=${PROMPTS:-512}
EVX=${EVX:---precise --seeds 2}
[ -f $G/fewstep.gz ] && [ ! -x $FS ] && gunzip -kf $G/fewstep.gz
t0=$(date +%s)
tr() { # name config [--set ...]
  local n=$1 c=$2; shift 2
  $FS train --config $c --set out_dir=$O/$n --set train.steps=$S --set train.sample_every=0 --set train.ckpt_every=$S "$@" > $O/$n.log 2>&1 || echo "TRAIN $n FAILED: $(tail -3 $O/$n.log)"
}
$FS data synth --out $O/held --count 16 --heldout 1024 --frames 8 --size 16 --text-dim 32 --seed 0 > /dev/null 2>&1
$FS data synth --out $O/prompts --count $NP --heldout 16 --frames 8 --size 16 --text-dim 32 --seed 0 > /dev/null 2>&1
DMD="--set roles.student.lr=2e-4 --set roles.critic.lr=4e-4 --set roles.student.ema_decay=0.99 --set roles.student.ema_start=100 --set params.regression_weight=0"
tr c_w3 configs/consistency.yaml &
tr c_w1 configs/consistency.yaml --set params.cfg=1 &
tr c_w3_lr configs/consistency.yaml --set roles.student.lr=1e-4 &
tr c_w1_lr configs/consistency.yaml --set params.cfg=1 --set roles.student.lr=1e-4 &
tr a_w3 configs/dmd_adv.yaml &
tr a_w1 configs/dmd_adv.yaml --set params.cfg=1 &
tr a_w1_r5 configs/dmd_adv.yaml --set params.cfg=1 --set params.generator_update_ratio=5 &
tr a_w1_g10 configs/dmd_adv.yaml --set params.cfg=1 --set params.gen_gan_weight=3e-2 --set params.disc_gan_weight=1e-1 &
tr d_w3 configs/dmd.yaml --set params.cfg=3 $DMD &
tr d_w1 configs/dmd.yaml --set params.cfg=1 $DMD &
( for w in 1 3; do
    $FS data ode-pairs --config configs/odeinit.yaml --teacher $T --prompts $O/prompts/train.arrow --out $O/pairs$w/pairs.arrow \
      --steps 48 --cfg $w --timesteps 1000,750,500,250 --batch 64 > $O/pairs$w.log 2>&1 || echo "PAIRS $w FAILED"
    tr o_w$w configs/odeinit.yaml --set data.path=$O/pairs$w/pairs.arrow --set train.steps=$OS --set train.ckpt_every=$OS &
  done
  tr o_w1_nc configs/odeinit.yaml --set data.path=$O/pairs1/pairs.arrow --set train.steps=$OS --set train.ckpt_every=$OS --set params.clean_context=false &
  wait
  for w in 1 3; do
    tr s_w$w configs/selfforcing.yaml --set params.cfg=$w --set roles.student.weights=$O/o_w$w/checkpoints/$(printf step-%06d $OS)/student.safetensors &
  done; wait ) &
wait
echo "training done $(( $(date +%s) - t0 )) s"
ck() { echo "$O/$1/checkpoints/$(printf 'step-%06d' ${2:-$S})/${3:-student}.safetensors"; }
EV="--teacher $T --heldout $O/held/heldout.arrow $EVX --fd-blocks --batch 128"
$FS eval --config configs/consistency.yaml $EV --teacher-cfg 3 --student-sampler consistency --out $O/E_c \
  --student $(ck c_w3) --students c_w1=$(ck c_w1) --students c_w3_lr=$(ck c_w3_lr) --students c_w1_lr=$(ck c_w1_lr) \
  --students c_w3_ema=$(ck c_w3 $S ema) > $O/E_c.txt 2>$O/E_c.err &
$FS eval --config configs/dmd_adv.yaml $EV --teacher-cfg 3 --student-sampler fewstep --out $O/E_a \
  --student $(ck a_w3) --students a_w3e=$(ck a_w3 $S ema) --students a_w1=$(ck a_w1) --students a_w1e=$(ck a_w1 $S ema) \
  --students a_w1_r5e=$(ck a_w1_r5 $S ema) --students a_w1_g10e=$(ck a_w1_g10 $S ema) \
  --students d_w3e=$(ck d_w3 $S ema) --students d_w1=$(ck d_w1) --students d_w1e=$(ck d_w1 $S ema) > $O/E_a.txt 2>$O/E_a.err &
$FS eval --config configs/selfforcing.yaml $EV --teacher-cfg 3 --student-sampler stream --long-frames 32 --out $O/E_s \
  --student $(ck s_w3) --students s_w3e=$(ck s_w3 $S ema) --students s_w1=$(ck s_w1) --students s_w1e=$(ck s_w1 $S ema) \
  --students o_w3=$(ck o_w3 $OS) --students o_w1=$(ck o_w1 $OS) --students o_w1_nc=$(ck o_w1_nc $OS) > $O/E_s.txt 2>$O/E_s.err &
wait
echo "all done $(( $(date +%s) - t0 )) s"
for e in E_c E_a E_s; do echo "== $e"; cat $O/$e.txt; tail -3 $O/$e.err; done
for n in c_w3 a_w1 d_w1 s_w1 s_w3; do echo "== $n"; tail -2 $O/$n.log; done
# small outputs back
mkdir -p ${OUT:-/tmp/q}/back; cp $O/E_*.txt ${OUT:-/tmp/q}/back/ 2>/dev/null; for e in E_c E_a E_s; do cp $O/$e/table.json ${OUT:-/tmp/q}/back/$e.json 2>/dev/null; done
for n in $O/*/metrics.jsonl; do d=$(basename $(dirname $n)); tail -1 $n > ${OUT:-/tmp/q}/back/$d.last.json; done
rm -rf $O
