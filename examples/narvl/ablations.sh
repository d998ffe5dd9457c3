#!/usr/bin/env bash
# NARVL ablations on the toy benchmark, run after (or beside) toy.sh, same settings and schedule as its
# NARVL models; TASK (default vqa: 5 epochs, a few minutes per model on one CPU thread; caption is the
# paper's choice but costs ~15 min per model here):
#   Table 8: Query-CTC vs position-wise CE (--loss ce, decoded with --ctc-no-merge)
#   Table 10: number of queries (N_ABL, default "12" for VQA, "32" otherwise; toy.sh's N is the reference row;
#             an N too small for the longest training target is refused by the task)
#   Table 7: learnable queries vs the encoder output as decoder input (--decoder-input encoder)
# Scores land beside toy.sh's (score_<task>_abl_*.json in $RUN); examples/narvl/table.py lists them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source examples/lib.sh  # train, decode_score, vl_scorer, the shared flags
IMAGES=${IMAGES:-data/toy/images}; DATA=${DATA:-data/toy/vl}; RUN=${RUN:-runs/narvl_toy}; mkdir -p "$RUN"
T=${TASK:-vqa}; BINS=64
declare -A N=([caption]=24 [vqa]=6 [grounding]=7 [entailment]=2)
declare -A EPOCHS=([caption]=3 [vqa]=5 [grounding]=8 [entailment]=4)
declare -A MAXLEN=([caption]=30 [vqa]=6 [grounding]=6 [entailment]=3)
VL="--task vision_language --vl-task $T --image-dir ../images/pixels --patch-image-size 96 --num-bins $BINS"
TRAIN="$VL $OPT_TOY $TOY_FLAGS --best-checkpoint-metric loss --log-interval 50 --seed 1 --max-epoch ${EPOCHS[$T]} \
  --arch narvl_tiny --criterion query_ctc --label-smoothing 0.1"
GEN_TASK="$VL --post-process sentencepiece --generator ctc"; SCORE_QUIET=1; vl_scorer "$T"
score() {  # score NAME GENERATE-ARGS...: decode_score (examples/lib.sh) of $RUN/NAME's checkpoint_best.pt
  LABEL=$1 decode_score "$1" "$RUN/$1/checkpoint_best.pt" "${@:2}"
}
train "${T}_abl_ce" --num-queries "${N[$T]}" --loss ce
score "${T}_abl_ce" --ctc-no-merge
DEFAULT_N=32; [ "$T" = vqa ] && DEFAULT_N=12
for n in ${N_ABL:-$DEFAULT_N}; do
  train "${T}_abl_n$n" --num-queries "$n"
  score "${T}_abl_n$n"
done
train "${T}_abl_encin" --decoder-input encoder
score "${T}_abl_encin"
