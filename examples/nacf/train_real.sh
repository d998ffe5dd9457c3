#!/usr/bin/env bash
# NACF with the paper's settings on MSVD or MSR-VTT (features as the NACF release ships them).
#   bash examples/nacf/train_real.sh msrvtt DATA_DIR [SAVE_DIR]
#   bash examples/nacf/train_real.sh msvd   DATA_DIR [SAVE_DIR]
# DATA_DIR: the output of scripts/prepare_msrvtt.py / prepare_msvd.py, with the two HDF5
# feature files (one (frames, 2048) dataset per video id) copied or linked into it.
# Add --cpu and smaller batches to run without a GPU.
set -euo pipefail
DATASET=$1; DATA=$2; SAVE=${3:-runs/nacf_$DATASET}
U="$(cd "$(dirname "$0")/../.." && pwd)/fairseq_nar_caption"
FEATS="--feature-files image_resnet101_imagenet_fps_max60.hdf5,motion_resnext101_kinetics_duration16_overlap8.hdf5 --frames-per-video 8"
case $DATASET in
  # N_max 30, β = [0.35, 0.9], 20 categories, length normalisation α = 1.35 (reference beam_alpha)
  msrvtt) N=30; BETA="--mask-ratio-low 0.35 --mask-ratio-high 0.9"; CAT="--num-categories 20"; ALPHA=1.35 ;;
  # N_max 20, β = [0, 1], α = 1.0
  msvd)   N=20; BETA="--mask-ratio-low 0 --mask-ratio-high 1"; CAT=""; ALPHA=1.0 ;;
  *) echo "dataset must be msrvtt or msvd" >&2; exit 2 ;;
esac
# d 512, FFN 2048, 8 heads, 1 decoder layer, dropout 0.5, batch 64, 50 epochs, Adam with
# weight decay 5e-4 and lr x0.9 per epoch (reference: lr 5e-4, clip_grad_value 5)
COMMON="--task captioning $FEATS --max-target-positions $N --embed-dim 512 --ffn-embed-dim 2048 --attention-heads 8 \
  --dropout 0.5 --optimizer adam --lr 5e-4 --weight-decay 5e-4 --lr-scheduler fixed --force-anneal 1 --lr-shrink 0.9 \
  --clip-norm 5 --batch-size 64 --max-epoch 50 --valid-subset val --no-epoch-checkpoints --seed 1"
fairseq-train "$DATA" --user-dir "$U" $COMMON --arch nacf_arb --criterion label_smoothed_cross_entropy \
  --label-smoothing 0.1 --save-dir "$SAVE/arb"
fairseq-train "$DATA" --user-dir "$U" $COMMON --arch nacf $CAT --criterion nacf_loss --vis-weight 0.8 $BETA \
  --init-from-ar "$SAVE/arb/checkpoint_best.pt" --save-dir "$SAVE/nacf"
# decode: CT-MP, T = 5, B = 6, AR-B rescoring (the paper's default)
fairseq-generate "$DATA" --user-dir "$U" --task captioning $FEATS --max-target-positions $N \
  --path "$SAVE/nacf/checkpoint_best.pt" --gen-subset test --generator ct-mp --nar-iterations 5 --length-beam 6 \
  --length-norm-alpha $ALPHA --teacher-path "$SAVE/arb/checkpoint_best.pt" --batch-size 64 > "$SAVE/generate_test.txt"
nar-caption-score --refs "$DATA/test_refs.json" --generate-output "$SAVE/generate_test.txt" \
  --train-manifest "$DATA/train.tsv" --dict "$DATA/dict.txt"
