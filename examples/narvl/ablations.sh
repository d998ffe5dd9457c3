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
IMAGES=${IMAGES:-data/toy/images}; DATA=${DATA:-data/toy/vl}; RUN=${RUN:-runs/narvl_toy}; mkdir -p "$RUN"
T=${TASK:-vqa}; U="$PWD/fairseq_nar_caption"; BINS=64
declare -A N=([caption]=24 [vqa]=6 [grounding]=7 [entailment]=2)
declare -A EPOCHS=([caption]=3 [vqa]=5 [grounding]=8 [entailment]=4)
declare -A MAXLEN=([caption]=30 [vqa]=6 [grounding]=6 [entailment]=3)
VL="--task vision_language --vl-task $T --image-dir ../images/pixels --patch-image-size 96 --num-bins $BINS"
TRAIN="$VL --optimizer adam --adam-betas (0.9,0.98) --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 \
  --clip-norm 1.0 --batch-size 64 --num-workers 0 --valid-subset val --no-epoch-checkpoints \
  --best-checkpoint-metric loss --cpu --no-progress-bar --log-interval 50 --seed 1 --max-epoch ${EPOCHS[$T]} \
  --arch narvl_tiny --criterion query_ctc --label-smoothing 0.1"
source examples/lib.sh  # train NAME ARGS...
score() {  # score NAME GENERATE-ARGS...
  local id=$1; shift
  [ -f "$RUN/score_$id.json" ] && return 0
  fairseq-generate "$DATA" --user-dir "$U" $VL --path "$RUN/$id/checkpoint_best.pt" --gen-subset test \
    --batch-size 50 --cpu --post-process sentencepiece --generator ctc "$@" > "$RUN/gen_$id.txt" 2> /dev/null
  local refs=(); [ "$T" = caption ] && refs=(--refs "$DATA/caption_test_refs.json" --metrics Bleu METEOR CIDEr-D)
  python -m fairseq_nar_caption.cli.score_vl --task "$T" --tsv "$DATA/${T}_test.tsv" \
    --generate-output "$RUN/gen_$id.txt" --image-dir "$IMAGES/pixels" --num-bins $BINS --name "$id" \
    "${refs[@]}" --json-out "$RUN/score_$id.json" 2> /dev/null
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
