#!/usr/bin/env bash
# AR baseline (AR-B / AIC, and the teacher of the NAR methods) on toy images, 2 CPU cores.
# usage: train_toy.sh DATA SAVE_DIR [extra fairseq-train args]
set -euo pipefail
DATA=${1:-data/toy/images}; SAVE=${2:-runs/ar_toy}; shift 2 || true
USER_DIR="$(cd "$(dirname "$0")/../.." && pwd)/fairseq_nar_caption"
fairseq-train "$DATA" --user-dir "$USER_DIR" --task captioning \
  --arch ar_caption_tiny --dropout 0.1 --attention-dropout 0.1 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 \
  --clip-norm 1.0 --batch-size 64 --max-epoch ${EPOCHS:-8} --num-workers 0 \
  --valid-subset val --best-checkpoint-metric loss --no-epoch-checkpoints \
  --save-dir "$SAVE" --seed 1 --cpu --no-progress-bar --log-interval 50 "$@"
