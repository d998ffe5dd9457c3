#!/usr/bin/env bash
# RDT with the paper's settings on MS COCO, Karpathy split (Section IV-A): --arch rdt = 3 Ranking Visual
# Encoders (λ_F 0.75, λ_E 0.55), 3 Semantic Transformer + 3 Sentence Decoder blocks, d 512, 8 heads; 14 bits
# (a vocabulary of 8193-16384 words: prepare_coco_karpathy.py --min-count 5 gives about 10k); loss weights
# λ1, λ2, λ3 = 1, 1, 5, δ_tim 0.12, δ_sen 0.15; stage 1 60 epochs with Adam, batch 16 (the paper's; the
# reference: lr 5e-4 Noam, 20k warm-up, 4 GPUs x 32); stage 2 guided SCST 60 epochs, fixed lr 1e-5, batch 16;
# decoding T = 50, Δ = 0, deterministic; a cascade of two RDT models.
#   bash examples/rdt/train_coco.sh DATA_DIR [SAVE_DIR]
# DATA_DIR: the output of scripts/prepare_coco_karpathy.py (train = train + restval, val, test, dict.txt) with a
# grid-feature HDF5 linked into it: $GRIDS (default X152_grid_feats_coco_trainval.hdf5, key '%d_grids', (49, 2048)
# per image as the RDT release; the paper uses CLIP ViT-B/32 grids + CLS).  One GPU.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"  # train, decode_score, the shared flags
DATA=$1; RUN=${2:-runs/rdt_coco}; GRIDS=${GRIDS:-X152_grid_feats_coco_trainval.hdf5}
mkdir -p "$RUN"
FEATS="--feature-files $GRIDS --feature-key-template %d_grids --feature-check lazy"
RET="$PWD/$RUN/retrieval.json"
# train NAME ARGS... (examples/lib.sh): into $RUN/NAME, fairseq's output on the console
TRAIN="--task captioning --generator diffusion $FEATS --retrieval-file $RET --retrieval-topk 5 --max-target-positions 32 \
  --arch rdt --seq-len 21 --dropout 0.1 --batch-size 16 --num-workers 4 $VALID --seed 1"
TRAIN_LOGS=-
# stage 1 and the cascade: Adam, 20k warm-up, clip 0.1, 60 epochs
STAGE1_OPT="$ADAM $INV_SQRT --lr 5e-4 --warmup-updates 20000 --clip-norm 0.1 --max-epoch 60 \
  --best-checkpoint-metric loss"

# 0. top-20 training sentences per image (our ridge-map embedding: cli/retrieve.py documents it; the paper: CLIP)
[ -f "$RET" ] || python -m fairseq_nar_caption.cli.retrieve "$DATA" --splits train,val,test --k 20 \
  --feature-files "$GRIDS" --feature-key-template %d_grids --out "$RET"

# 1. the AR teacher (same sizes) and its beam-5 caption of every training image
TRAIN="--task captioning $FEATS --batch-size 50 $VALID" train ar --arch ar_caption $XENT $OPT --lr 5e-4 \
  --warmup-updates 10000 --max-epoch 20 --best-checkpoint-metric loss
nar-caption-distill "$DATA" --path "$RUN/ar/checkpoint_best.pt" --device cuda --batch-size 256 -- $FEATS --max-len-b 20

# 2. stage 1: λ1 XE + λ2 bit + λ3 rank (Eq. 13)
train stage1 --criterion rdt_loss --lambda-xe 1 --lambda-bit 1 --lambda-rank 5 --delta-tim 0.12 --delta-sen 0.15 \
  $STAGE1_OPT

# 3. stage 2: guided SCST (Eq. 14) from the best stage-1 model
train stage2 --criterion rdt_scst --num-samples 5 --hybrid-distill-split train_distill \
  --finetune-from-model "$RUN/stage1/checkpoint_best.pt" --optimizer adam --lr 1e-5 --lr-scheduler fixed \
  --max-epoch 60 $SELECT

# 4. the cascade: a second model conditioned on the first model's captions (train + val decoded by stage 2)
G="-- --task captioning --generator diffusion $FEATS --retrieval-file $RET --diffusion-steps 50"
nar-caption-distill "$DATA" --path "$RUN/stage2/checkpoint_best.pt" --out-split train_stage1 --device cuda $G
nar-caption-distill "$DATA" --path "$RUN/stage2/checkpoint_best.pt" --split val --out-split val_stage1 --device cuda $G
train cascade --cascaded --cascade-manifests train_stage1.tsv,val_stage1.tsv --criterion rdt_loss $STAGE1_OPT

# 5. decode the test split (T = 50, Δ = 0) and score; the cascade as SCD-Net's (T 50 then 40, Δ 45 then 0):
#    decode_score (examples/lib.sh) -> $RUN/generate_ID.txt, $RUN/score_ID.json
GEN_TASK="--task captioning --generator diffusion $FEATS --retrieval-file $RET"; GEN_BATCH="--batch-size 100"; GEN_PREFIX=generate
SCORE_SKIP=0
LABEL="RDT stage2" decode_score stage2 "$RUN/stage2/checkpoint_best.pt" --diffusion-steps 50 --time-difference 0
LABEL="RDT cascade" decode_score cascade "$RUN/stage2/checkpoint_best.pt:$RUN/cascade/checkpoint_best.pt" \
  --cascade-steps 50 --cascade-time-difference 45 --diffusion-steps 40 --time-difference 0
