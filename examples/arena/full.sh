#!/usr/bin/env bash
# The full arena (examples/arena/README.md): longer training than `make demo` (AR to its validation plateau,
# at most 30 epochs; NAR 600 updates, RDT 900: arena.sh's defaults), every row of each
# paradigm, METEOR, two interleaved benchmark passes and a forced-length sweep, on toy images and
# toy videos; then the latency columns at the papers' base size (6-layer decoder, d 512, short training).
#   bash examples/arena/full.sh [images|videos|base|all|videos-demo]   (default: all; videos-demo: toy videos
#   at make demo's scale, not part of all)
# BENCH=0 trains only (time the benchmark later, on a quiet machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
if [ "$what" = images ] || [ "$what" = all ]; then
  DATA=data/toy/images RUN=runs/arena_images TITLE="arena, toy images (full recipe)" bash examples/arena/arena.sh
fi
if [ "$what" = videos ] || [ "$what" = all ]; then
  DATA=data/toy/videos RUN=runs/arena_videos FEATS="--feature-files appearance.h5,motion.h5" \
    BENCH_ITEMS=150 TITLE="arena, toy videos (full recipe)" bash examples/arena/arena.sh
fi
if [ "$what" = videos-demo ]; then
  # toy videos at make demo's scale (examples/lib.sh demo_scale: d 128, 1 + 2 layers, NAR 300 updates)
  source examples/lib.sh; demo_scale
  DATA=data/toy/videos RUN=runs/demo_videos FEATS="--feature-files appearance.h5,motion.h5" \
    TITLE="arena, toy videos (demo scale)" bash examples/arena/arena.sh
fi
if [ "$what" = base ] || [ "$what" = all ]; then
  # latency at the papers' base size: d 512, 8 heads, 6 + 6 layers (RDT: 6 RVE, 3 ST + 3 SD); short
  # training, enough for captions of sensible length; quality at this budget is not the point
  DATA=data/toy/images RUN=runs/arena_base AR_EPOCHS=${BASE_AR_EPOCHS:-1} SHALLOW=0 NAR_UPDATES=${BASE_NAR_UPDATES:-200} \
    SIZE="--embed-dim 512 --ffn-embed-dim 2048 --attention-heads 8 --encoder-layers 6 --decoder-layers 6" \
    RDT_SIZE_LAYERS="--decoder-layers 3 --semantic-layers 3" BENCH_ITEMS=60 PASSES=1 METRICS=Bleu,CIDEr-D \
    TITLE="arena, base size (d 512, 6-layer decoders), short training" bash examples/arena/arena.sh
fi
