#!/usr/bin/env bash
# SAIC with the paper's settings on MS COCO, Karpathy split (Section 5.1): k = 4, 6 + 6 layers, d 512,
# FFN 2048, 8 heads; SAIC initialised from the AIC teacher and fine-tuned 25 epochs with Adam,
# lr 3e-5 x0.9 every 5 epochs, curriculum λ = 1 over all updates (Eq. 9), hybrid distillation p_hybr = 0.5.
#   bash examples/saic/train_coco.sh DATA_DIR [SAVE_DIR]
# DATA_DIR: the output of scripts/prepare_coco_karpathy.py with coco_detections.hdf5 (bottom-up region
# features as M2 / PNAIC ship them, one (N, 2048) dataset per image under '<cocoid>_features') copied or
# linked into it.  Runs on one GPU (drop --device cuda and add --cpu to the commands to run on CPU).
# The paper's AIC is "trained with XE loss and then fine-tuned with SCST" (Section 3.2): step 1 (cross-entropy,
# Transformer-base recipe, our choice: the paper gives no AIC settings), then step 1b (--criterion scst: 5 samples
# per image, the mean-of-samples baseline, CIDEr-D reward; lr 5e-6 as M2 Transformer's SCST stage, our choice);
# the SCST-tuned AIC is the teacher of the distillation and SAIC's initialisation.  SCST_EPOCHS=0 skips step 1b.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"  # train, decode_score, the shared flags
DATA=$1; RUN=${2:-runs/saic_coco}; K=${K:-4}; BSZ=${BSZ:-50}
FEATS="--feature-files coco_detections.hdf5 --feature-key-template %d_features --feature-check lazy"
# train NAME ARGS... (examples/lib.sh): into $RUN/NAME, fairseq's output on the console
TRAIN="--task captioning $FEATS --max-target-positions 32 --embed-dim 512 --ffn-embed-dim 2048 --attention-heads 8 \
  --encoder-layers 6 --decoder-layers 6 --dropout 0.1 --batch-size $BSZ --num-workers 4 $VALID \
  --best-checkpoint-metric loss --seed 1"
TRAIN_LOGS=-
UPE=$(( ($(wc -l < "$DATA/train.tsv") - 1 + BSZ - 1) / BSZ ))  # updates per epoch
UPDATES=$(( 25 * UPE ))

# 1. AIC: the teacher and the initialisation (Algorithm 1, line 2)
train aic --arch ar_caption $XENT $OPT --lr 5e-4 --warmup-updates 10000 --max-epoch 20
AIC="$RUN/aic/checkpoint_best.pt"
# 1b. AIC fine-tuned with SCST (CIDEr-D optimisation), validated and selected by its greedy CIDEr-D on val
SCST_EPOCHS=${SCST_EPOCHS:-15}
if [ "$SCST_EPOCHS" -gt 0 ]; then
  train aic_scst --arch ar_caption --criterion scst --num-samples 5 --scst-baseline mean --finetune-from-model "$AIC" \
    $ADAM $CLIP --lr 5e-6 --max-epoch "$SCST_EPOCHS" --eval-cider --eval-cider-args '{"beam":1,"max_len_b":30}' \
    --best-checkpoint-metric cider --maximize-best-checkpoint-metric
  AIC="$RUN/aic_scst/checkpoint_best.pt"
fi

# 2. sequence-level distillation: the teacher's beam-5 caption of every training image, at most 28 words
#    (the group layout needs k·⌈N/k⌉ + 1 <= 32 decoder positions)
nar-caption-distill "$DATA" --path "$AIC" --device cuda --batch-size 256 -- \
  $FEATS --max-len-b 28

# 3. SAIC (Algorithm 1): k = 4 (RPR window k), curriculum over all updates, hybrid distillation
train saic --arch saic --group-size $K --init-from-ar "$AIC" \
  --criterion group_mask --curriculum-updates $UPDATES --curriculum-lambda 1 --p-hybr 0.5 --label-smoothing 0.1 \
  --hybrid-distill-split train_distill --optimizer adam --lr 3e-5 --lr-scheduler step \
  --lr-deacy-period $(( 5 * UPE )) --lr-decay 0.9 --max-update $UPDATES

# 4. Table 2: AIC beam 5 and SAIC (M_out, M_fill) = (5,5), (5,1), (1,1) on the test split: decode_score
#    (examples/lib.sh) -> $RUN/generate_ID.txt, $RUN/score_ID.json, the ID as the row label
GEN_TASK="--task captioning $FEATS --max-len-b 30"; GEN_BATCH="--batch-size 100"; GEN_PREFIX=generate; SCORE_SKIP=0
LABEL=aic_beam5 decode_score aic_beam5 "$AIC" --beam 5
for m in "5 5" "5 1" "1 1"; do
  set -- $m
  LABEL="saic_$1_$2" decode_score "saic_$1_$2" "$RUN/saic/checkpoint_best.pt" --generator outline-fill \
    --outline-beam "$1" --fill-beam "$2"
done
nar-caption-table "$RUN"/score_*.json --out "$RUN/scores.md"

# 5. latency: one image at a time (no mini-batching), CUDA-synchronised, encoder included
S="--path $RUN/saic/checkpoint_best.pt $FEATS --max-len-b 30 --generator outline-fill"
nar-caption-benchmark "$DATA" --subset test --device cuda \
  --row "AIC beam 5=--path $AIC $FEATS --beam 5 --max-len-b 30" \
  --row "SAIC (5,5)=$S --outline-beam 5 --fill-beam 5" \
  --row "SAIC (5,1)=$S --outline-beam 5 --fill-beam 1" \
  --row "SAIC (1,1)=$S --outline-beam 1 --fill-beam 1" \
  --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md"
