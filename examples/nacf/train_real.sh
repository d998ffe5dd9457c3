#!/usr/bin/env bash
# NACF with the paper's settings on MSVD or MSR-VTT (features as the NACF release ships them).
#   bash examples/nacf/train_real.sh msrvtt DATA_DIR [SAVE_DIR]
#   bash examples/nacf/train_real.sh msvd   DATA_DIR [SAVE_DIR]
# DATA_DIR: the output of scripts/prepare_msrvtt.py / prepare_msvd.py, with the two HDF5
# feature files (one (frames, 2048) dataset per video id) copied or linked into it.
# Add --cpu and smaller batches to run without a GPU.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"  # train, decode_score, the shared flags
DATASET=$1; DATA=$2; RUN=${3:-runs/nacf_$DATASET}
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
# train NAME ARGS... (examples/lib.sh): into $RUN/NAME, fairseq's output on the console
TRAIN="--task captioning $FEATS --max-target-positions $N --embed-dim 512 --ffn-embed-dim 2048 --attention-heads 8 \
  --dropout 0.5 --optimizer adam --lr 5e-4 --weight-decay 5e-4 --lr-scheduler fixed --force-anneal 1 --lr-shrink 0.9 \
  --clip-norm 5 --batch-size 64 --max-epoch 50 $VALID --seed 1"
TRAIN_LOGS=-
train arb --arch nacf_arb $XENT
train nacf --arch nacf $CAT --criterion nacf_loss --vis-weight 0.8 $BETA --init-from-ar "$RUN/arb/checkpoint_best.pt"
# decode: CT-MP, T = 5, B = 6, AR-B rescoring (the paper's default) -> $RUN/generate_test.txt, scores on the console
GEN_TASK="--task captioning $FEATS --max-target-positions $N"; GEN_BATCH="--batch-size 64"; GEN_PREFIX=generate
SCORE_JSON=0
decode_score test "$RUN/nacf/checkpoint_best.pt" --generator ct-mp --nar-iterations 5 --length-beam 6 \
  --length-norm-alpha $ALPHA --teacher-path "$RUN/arb/checkpoint_best.pt"
