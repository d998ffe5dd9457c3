#!/usr/bin/env bash
# NARVL on the real datasets with the paper's settings where this plugin can follow them
# (see examples/narvl/README.md, "Real data", for what is not reproduced).
#   bash examples/narvl/train_real.sh TASK DATA [OFA_CKPT]
# TASK: caption | vqa | grounding | entailment;  DATA: a folder made by the prep scripts
# (scripts/prepare_vl_coco_caption.py, prepare_vqav2.py, prepare_refcoco.py, prepare_snli_ve.py)
# followed by scripts/prepare_vl_vocab.py (spm.model, dict.txt with 1000 <bin_i>).
# OFA_CKPT (optional): an OFA checkpoint whose encoder initialises ours (modules/ofa_encoder.py mapping;
# its sizes must match narvl_base: ResNet101 stages 1-3, d 768, 6 encoder layers).
# Multi-GPU: prefix with the usual fairseq/torchrun setup; --update-freq keeps the effective batch.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/lib.sh  # train, decode_score, the shared flags
TASK=${1:?task}; DATA=${2:?data folder}; OFA=${3:-}
RUN=${RUN:-runs/narvl_$TASK}; mkdir -p "$RUN"
# queries per task (paper, Section 4 / official scripts): caption 20, VQA 6, grounding 5, entailment 2.
# Grounding: 4 bins + blanks between equal neighbouring bins can need up to 7 positions; the task refuses
# a training set that does not fit, so raise N_GROUNDING to what it reports (or 7).
declare -A N=([caption]=20 [vqa]=6 [grounding]=${N_GROUNDING:-7} [entailment]=2)
declare -A EPOCHS=([caption]=5 [vqa]=15 [grounding]=20 [entailment]=10)
declare -A MAXLEN=([caption]=16 [vqa]=6 [grounding]=6 [entailment]=3)
VL="--task vision_language --vl-task $TASK --patch-image-size 480 --num-bins 1000 --max-target-positions 32"
# train NAME ARGS... (examples/lib.sh): into $RUN/NAME, fairseq's output on the console
TRAIN="$VL --optimizer adam --adam-betas (0.9,0.999) --adam-eps 1e-8 --weight-decay 0.01 $CLIP \
  --lr-scheduler polynomial_decay --warmup-updates ${WARMUP:-1000} --total-num-update ${TOTAL:-50000} \
  --max-epoch ${EPOCHS[$TASK]} --batch-size ${BSZ:-16} --update-freq ${UPDATE_FREQ:-4} --num-workers 4 \
  $VALID --best-checkpoint-metric loss --fp16"
TRAIN_LOGS=-
INIT=(); [ -n "$OFA" ] && INIT=(--ofa-checkpoint "$OFA")
# 1. AR teacher/baseline (OFA-style, same encoder and decoder size), lr 1e-5 with an OFA init as OFA's recipe
#    (5e-4 from scratch), label smoothing 0.1
train ar --arch narvl_ar_base $XENT --lr ${AR_LR:-1e-5} "${INIT[@]}"
# 2. KD (caption, VQA): the teacher's beam-5 outputs replace the targets (NARVL trains on distilled data)
TRAIN_SUBSET=train
if [ "$TASK" = caption ] || [ "$TASK" = vqa ]; then
  python -m fairseq_nar_caption.cli.distill_vl "$DATA" --path "$RUN/ar/checkpoint_best.pt" --vl-task "$TASK" \
    --batch-size 64 --device cuda -- $VL --max-len-b ${MAXLEN[$TASK]}
  TRAIN_SUBSET=train_distill
fi
# 3. NARVL: N learnable queries, Query-CTC with label smoothing 0.1
train narvl --arch narvl_base --num-queries ${N[$TASK]} --criterion query_ctc --label-smoothing 0.1 \
  --lr ${NAR_LR:-1e-5} "${INIT[@]}" --train-subset $TRAIN_SUBSET
# 4. decode (batch 1 as the paper times it) and score: decode_score (examples/lib.sh) -> $RUN/gen_ID.txt,
#    $RUN/score_ID.json
GEN_TASK="$VL --post-process sentencepiece --max-len-b ${MAXLEN[$TASK]}"; GEN_BATCH="--batch-size 1"; SCORE_SKIP=0
SCORER="python -m fairseq_nar_caption.cli.score_vl"
SCORE_ARGS=(--task "$TASK" --tsv "$DATA/${TASK}_test.tsv" --num-bins 1000)
if [ "$TASK" = caption ]; then SCORE_ARGS+=(--refs "$DATA/caption_test_refs.json"); fi
decode_score ar_b5 "$RUN/ar/checkpoint_best.pt" --beam 5
decode_score narvl "$RUN/narvl/checkpoint_best.pt" --generator ctc
python -m fairseq_nar_caption.cli.benchmark "$DATA" --subset test --device cuda \
  --row "AR beam 5=--path $RUN/ar/checkpoint_best.pt $VL --beam 5 --max-len-b ${MAXLEN[$TASK]}" \
  --row "NARVL=--path $RUN/narvl/checkpoint_best.pt $VL --generator ctc" \
  --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md"
