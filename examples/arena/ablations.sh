#!/usr/bin/env bash
# Issue #12's ablation rows on the toy-images arena: every change of the improved recipe against the
# papers' configuration, same teacher, same distillation, same 600 updates (RDT 900), one seed.
#   bash examples/arena/ablations.sh        (after `BENCH=0 bash examples/arena/full.sh images`, which
#                                            trains the AR teacher, its distillation and the retrieval file)
# Trains into $RUN/ab_<name> (two at a time, one thread each), then one interleaved benchmark of all rows:
# $RUN/ablations.{md,json,png}.  Every model is selected by validation CIDEr-D (--eval-cider).
#   narvl_paper  Query-CTC                        narvl_glat  + glancing (--glat-ratio 0.5)
#   nacf_paper   NACF as in the paper             nacf_pos    + --scale-positions     nacf_glat  + glancing
#   saic         group mask, curriculum over the 600 updates
#   rdt          900 updates, decoded with --diffusion-eos-fallback
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1
source examples/lib.sh  # train, step, the shared flags
DATA=${DATA:-data/toy/images}; RUN=${RUN:-runs/arena_images}; UPD=${UPD:-600}; SEED=${SEED:-1}
AR=$RUN/ar/checkpoint_best.pt; KD=train_distill_$(basename "$RUN"); RET="$(cd "$RUN" && pwd)/retrieval.json"
[ -f "$AR" ] && [ -f "$DATA/$KD.tsv" ] && [ -f "$RET" ] || { echo "run examples/arena/full.sh images first" >&2; exit 1; }
SIZE=${SIZE:---embed-dim 256 --ffn-embed-dim 1024 --attention-heads 4 --encoder-layers 2 --decoder-layers 2}
NAR_UPDATES=$UPD; RDT_UPDATES=$(( UPD * 3 / 2 )); FEATS=
unset NAR_EPOCHS  # the fixed update budget above, even with NAR_EPOCHS exported by the caller
source examples/arena/recipe.sh  # COMMON NAR_OPT and each paradigm's flags
DIS="--train-subset $KD"
NACF="$NACF_FLAGS --length-beam 3 $DIS"
# train NAME ARGS... (examples/lib.sh): into $RUN/NAME, log in $RUN/logs/NAME.log, unless finished
TRAIN="$COMMON --seed $SEED"; TRAIN_LOGS=$RUN/logs; VALID_LINES=1; CLOCK=1; mkdir -p "$RUN/logs"
train ab_narvl_paper $NARVL_FLAGS $DIS & train ab_narvl_glat $NARVL_FLAGS --glat-ratio 0.5 $DIS & wait
train ab_nacf_paper $NACF & train ab_nacf_pos $NACF --scale-positions & wait
train ab_nacf_glat $NACF --scale-positions --glat-ratio 0.5 &
train ab_saic $SAIC_FLAGS --group-size 2 $DIS & wait
train ab_rdt $RDT_FLAGS $DIS
A="--path $AR --max-len-b 30"; B="$RUN/ab_"
NP="--path ${B}nacf_paper/checkpoint_best.pt --generator"; NG="--path ${B}nacf_glat/checkpoint_best.pt --generator"
S="--path ${B}saic/checkpoint_best.pt --max-len-b 30 --generator outline-fill"
R="--path ${B}rdt/checkpoint_best.pt --retrieval-file $RET --generator diffusion --diffusion-eos-fallback"
step "benchmark (quiet machine wanted)"
nar-caption-benchmark "$DATA" --subset test --threads 1 --max-items ${ITEMS:-100} --passes ${PASSES:-2} \
  --metrics Bleu,METEOR,CIDEr-D --baseline "AR beam 5" \
  --row "AR beam 5=$A --beam 5" --row "AR greedy=$A --beam 1" \
  --row "NACF (paper) CT-MP T=2 B=3=$NP ct-mp --nar-iterations 2 --length-beam 3" \
  --row "NACF (paper) MP T=2 B=3=$NP mp --nar-iterations 2 --length-beam 3" \
  --row "NACF +pos CT-MP T=2 B=3=--path ${B}nacf_pos/checkpoint_best.pt --generator ct-mp --nar-iterations 2 --length-beam 3" \
  --row "NACF +pos +GLAT MP T=1 B=1=$NG mp --nar-iterations 1 --length-beam 1" \
  --row "NACF +pos +GLAT MP T=2 B=3=$NG mp --nar-iterations 2 --length-beam 3" \
  --row "NACF +pos +GLAT CT-MP T=2 B=1=$NG ct-mp --nar-iterations 2 --length-beam 1" \
  --row "NACF +pos +GLAT CT-MP T=2 B=3=$NG ct-mp --nar-iterations 2 --length-beam 3" \
  --row "NACF +pos +GLAT CT-MP T=5 B=6 + AR teacher=$NG ct-mp --nar-iterations 5 --length-beam 6 --teacher-path $AR" \
  --row "SAIC k=2 (1,1)=$S --outline-beam 1 --fill-beam 1" --row "SAIC k=2 (5,1)=$S --outline-beam 5 --fill-beam 1" \
  --row "NARVL (paper) CTC=--path ${B}narvl_paper/checkpoint_best.pt --generator ctc" \
  --row "NARVL GLAT CTC=--path ${B}narvl_glat/checkpoint_best.pt --generator ctc" \
  --row "NARVL GLAT CTC + 1 refinement=--path ${B}narvl_glat/checkpoint_best.pt --generator ctc --ctc-refine-passes 1" \
  --row "NARVL GLAT CTC + 2 refinements=--path ${B}narvl_glat/checkpoint_best.pt --generator ctc --ctc-refine-passes 2" \
  --row "RDT T=10=$R --diffusion-steps 10" --row "RDT T=50=$R --diffusion-steps 50" \
  --title "arena, toy images: issue #12 ablations" --out-json "$RUN/ablations.json" --out-md "$RUN/ablations.md" \
  --out-png "$RUN/ablations.png" > /dev/null 2> "$RUN/logs/ablations_benchmark.log"
cat "$RUN/ablations.md"; python examples/arena/goals.py "$RUN/ablations.json"
