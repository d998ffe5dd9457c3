#!/usr/bin/env bash
# AR baseline (AR-B / AIC, and the teacher of the NAR methods) on toy images, 2 CPU cores.
# usage: train_toy.sh DATA SAVE_DIR [extra fairseq-train args]
set -euo pipefail
DATA=${1:-data/toy/images}; SAVE=${2:-runs/ar_toy}; shift 2 || true
source "$(dirname "$0")/../lib.sh"  # U and the shared flags (no cd: DATA and SAVE_DIR are the caller's paths)
fairseq-train "$DATA" --user-dir "$U" --task captioning --arch ar_caption_tiny $DROPOUT $XENT $OPT_TOY $TOY_FLAGS \
  --max-epoch ${EPOCHS:-8} --best-checkpoint-metric loss --save-dir "$SAVE" --seed 1 --log-interval 50 "$@"
