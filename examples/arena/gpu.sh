#!/usr/bin/env bash
# The arena benchmark on a GPU (CUDA-synchronised clock, fp16 where the model allows), over the
# checkpoints a CPU run of examples/arena/arena.sh trained (copy runs/arena_* and data/toy along).
#   bash examples/arena/gpu.sh [RUN=runs/arena_images] [DATA=data/toy/images]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
RUN=${RUN:-runs/arena_images}; DATA=${DATA:-data/toy/images}; FEATS=${FEATS:-}
test -f "$RUN/ar/checkpoint_best.pt" || { echo "$RUN: train the arena first (examples/arena/arena.sh)" >&2; exit 1; }
A="--path $RUN/ar/checkpoint_best.pt --max-len-b 30 $FEATS"
R="--path $RUN/rdt/checkpoint_best.pt --retrieval-file $PWD/$RUN/retrieval.json $FEATS --generator diffusion --diffusion-eos-fallback"
nar-caption-benchmark "$DATA" --subset test --device cuda ${FP16---fp16} --passes 3 --baseline "AR beam 5" \
  --metrics Bleu,CIDEr-D --length-sweep 8,16,30 \
  --row "AR beam 5=$A --beam 5" --row "AR greedy=$A --beam 1" \
  --row "NACF CT-MP T=2 B=3=--path $RUN/nacf/checkpoint_best.pt $FEATS --generator ct-mp --nar-iterations 2 --length-beam 3" \
  --row "SAIC k=2 (1,1)=--path $RUN/saic/checkpoint_best.pt --max-len-b 30 $FEATS --generator outline-fill --outline-beam 1 --fill-beam 1" \
  --row "NARVL CTC=--path $RUN/narvl/checkpoint_best.pt $FEATS --generator ctc" \
  --row "RDT T=10=$R --diffusion-steps 10" --row "RDT T=50=$R --diffusion-steps 50" \
  --title "arena on GPU" --out-json "$RUN/benchmark_gpu.json" --out-md "$RUN/benchmark_gpu.md" \
  --out-png "$RUN/benchmark_gpu.png"
