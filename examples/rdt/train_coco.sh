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
DATA=$1; SAVE=${2:-runs/rdt_coco}; GRIDS=${GRIDS:-X152_grid_feats_coco_trainval.hdf5}
U="$(cd "$(dirname "$0")/../.." && pwd)/fairseq_nar_caption"
mkdir -p "$SAVE"
FEATS="--feature-files $GRIDS --feature-key-template %d_grids --feature-check lazy"
RET="$PWD/$SAVE/retrieval.json"
COMMON="--task rdt_captioning $FEATS --retrieval-file $RET --retrieval-topk 5 --max-target-positions 32 \
  --arch rdt --seq-len 21 --dropout 0.1 --batch-size 16 --num-workers 4 --valid-subset val --no-epoch-checkpoints \
  --seed 1"

# 0. top-20 training sentences per image (our ridge-map embedding: cli/retrieve.py documents it; the paper: CLIP)
[ -f "$RET" ] || python -m fairseq_nar_caption.cli.retrieve "$DATA" --splits train,val,test --k 20 \
  --feature-files "$GRIDS" --feature-key-template %d_grids --out "$RET"

# 1. the AR teacher (same sizes) and its beam-5 caption of every training image
fairseq-train "$DATA" --user-dir "$U" --task captioning $FEATS --arch ar_caption --criterion label_smoothed_cross_entropy \
  --label-smoothing 0.1 --optimizer adam --adam-betas "(0.9,0.98)" --lr 5e-4 --lr-scheduler inverse_sqrt \
  --warmup-updates 10000 --clip-norm 1.0 --max-epoch 20 --batch-size 50 --valid-subset val \
  --best-checkpoint-metric loss --no-epoch-checkpoints --save-dir "$SAVE/ar"
nar-caption-distill "$DATA" --path "$SAVE/ar/checkpoint_best.pt" --device cuda --batch-size 256 -- $FEATS --max-len-b 20

# 2. stage 1: λ1 XE + λ2 bit + λ3 rank (Eq. 13)
fairseq-train "$DATA" --user-dir "$U" $COMMON --criterion rdt_loss --lambda-xe 1 --lambda-bit 1 --lambda-rank 5 \
  --delta-tim 0.12 --delta-sen 0.15 --optimizer adam --adam-betas "(0.9,0.98)" --lr 5e-4 \
  --lr-scheduler inverse_sqrt --warmup-updates 20000 --clip-norm 0.1 --max-epoch 60 --best-checkpoint-metric loss \
  --save-dir "$SAVE/stage1"

# 3. stage 2: guided SCST (Eq. 14) from the best stage-1 model
fairseq-train "$DATA" --user-dir "$U" $COMMON --criterion rdt_scst --num-samples 5 --hybrid-distill-split train_distill \
  --finetune-from-model "$SAVE/stage1/checkpoint_best.pt" --optimizer adam --lr 1e-5 --lr-scheduler fixed \
  --max-epoch 60 --eval-cider --best-checkpoint-metric cider --maximize-best-checkpoint-metric --save-dir "$SAVE/stage2"

# 4. the cascade: a second model conditioned on the first model's captions (train + val decoded by stage 2)
G="-- --task rdt_captioning $FEATS --retrieval-file $RET --diffusion-steps 50"
nar-caption-distill "$DATA" --path "$SAVE/stage2/checkpoint_best.pt" --out-split train_stage1 --device cuda $G
nar-caption-distill "$DATA" --path "$SAVE/stage2/checkpoint_best.pt" --split val --out-split val_stage1 --device cuda $G
fairseq-train "$DATA" --user-dir "$U" $COMMON --cascaded --cascade-manifests train_stage1.tsv,val_stage1.tsv \
  --criterion rdt_loss --optimizer adam --adam-betas "(0.9,0.98)" --lr 5e-4 --lr-scheduler inverse_sqrt \
  --warmup-updates 20000 --clip-norm 0.1 --max-epoch 60 --best-checkpoint-metric loss --save-dir "$SAVE/cascade"

# 5. decode the test split (T = 50, Δ = 0) and score; the cascade as SCD-Net's (T 50 then 40, Δ 45 then 0)
fairseq-generate "$DATA" --user-dir "$U" --task rdt_captioning $FEATS --retrieval-file "$RET" \
  --path "$SAVE/stage2/checkpoint_best.pt" --gen-subset test --diffusion-steps 50 --time-difference 0 \
  --batch-size 100 > "$SAVE/generate_stage2.txt"
fairseq-generate "$DATA" --user-dir "$U" --task rdt_captioning $FEATS --retrieval-file "$RET" \
  --path "$SAVE/stage2/checkpoint_best.pt:$SAVE/cascade/checkpoint_best.pt" --cascade-steps 50 \
  --cascade-time-difference 45 --diffusion-steps 40 --time-difference 0 --gen-subset test --batch-size 100 \
  > "$SAVE/generate_cascade.txt"
for name in stage2 cascade; do
  nar-caption-score --refs "$DATA/test_refs.json" --generate-output "$SAVE/generate_$name.txt" \
    --train-manifest "$DATA/train.tsv" --dict "$DATA/dict.txt" --name "RDT $name" --json-out "$SAVE/score_$name.json"
done
