#!/usr/bin/env bash
# SAIC on the toy image benchmark, 2 CPU cores:
#   1. AR baseline (AIC; also the teacher),
#   2. sequence-level distillation of every training image by the AR teacher (beam 5),
#   3. SAIC initialised from the AR weights: k = $K, RPR window k, curriculum over all
#      updates (Eq. 9, λ = 1), hybrid distillation p_hybr = 0.5 (Algorithm 1),
#   4. decoding of the test split with (M_out, M_fill) = (5,5), (5,1), (1,1), scores,
#   5. batch-1 latency and throughput (nar-caption-benchmark), speed-ups relative to AR beam 5.
# ABLATIONS=1 also trains the rows of Tables 5-7 (raw / sequence distillation, k = 2, 3,
# no curriculum, no RPR, no AR initialisation) and scores them with (1,1).
# Outputs land in $RUN (default runs/saic_toy); each training is skipped when it finished (examples/lib.sh).
#   bash examples/saic/toy.sh            (data: data/toy/images, made by nar-caption-toy-data if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
source examples/lib.sh  # train, decode_score, the shared flags
DATA=${DATA:-data/toy/images}; RUN=${RUN:-runs/saic_toy}; K=${K:-4}; mkdir -p "$RUN"
TRAIN="--task captioning $DROPOUT $TOY_FLAGS --best-checkpoint-metric loss --log-interval 100 --seed 1"

[ -f "$DATA/dict.txt" ] || python -m fairseq_nar_caption.cli.make_toy_data --out "$(dirname "$DATA")" > /dev/null

# 1. AIC: the AR baseline recipe (examples/ar_baseline/train_toy.sh), d 256, 2 + 2 layers
AR="$RUN/ar/checkpoint_best.pt"
train ar --arch ar_caption_tiny $XENT $OPT_TOY --max-epoch ${AR_EPOCHS:-8}

# 2. the teacher's caption of every training image (redone when the teacher is newer); at most
#    28 words: SAIC's group layout needs k·⌈N/k⌉ + 1 <= 32 (--max-target-positions) decoder positions
if [ ! "$DATA/train_distill.tsv" -nt "$AR" ]; then
  echo "== distill"
  nar-caption-distill "$DATA" --path "$AR" --out-split train_distill --overwrite -- --max-len-b 28 2> /dev/null
fi

# 3. SAIC fine-tuned from the AR weights; lr x0.9 every 5 epochs (the paper's schedule, toy lr);
#    T of Eq. 9 = all the updates of the fine-tuning
UPE=$(( ($(wc -l < "$DATA/train.tsv") - 1 + TOY_BSZ - 1) / TOY_BSZ ))  # updates per epoch
UPDATES=$(( ${SAIC_EPOCHS:-10} * UPE ))
SAIC="--arch saic_tiny --criterion group_mask --curriculum-updates $UPDATES --curriculum-lambda 1 \
  --label-smoothing 0.1 --hybrid-distill-split train_distill $ADAM --lr 5e-4 --lr-scheduler step \
  --lr-deacy-period $((5 * UPE)) --lr-decay 0.9 $CLIP --max-update $UPDATES"
train saic $SAIC --group-size $K --p-hybr 0.5 --init-from-ar "$AR"
if [ "${ABLATIONS:-0}" = 1 ]; then
  train saic_raw $SAIC --group-size $K --p-hybr 1 --init-from-ar "$AR"                   # Table 5: raw
  train saic_seqdist $SAIC --group-size $K --p-hybr 0 --init-from-ar "$AR"               # Table 5: seq. dist.
  for k in 2 3; do train "saic_k$k" $SAIC --group-size $k --p-hybr 0.5 --init-from-ar "$AR"; done  # Table 6
fi
if [ "${TABLE7:-0}" = 1 ]; then
  train saic_nocl $SAIC --group-size $K --p-hybr 0.5 --curriculum-lambda 0 --init-from-ar "$AR"   # Table 7: -CL
  train saic_norpr $SAIC --group-size $K --p-hybr 0.5 --rpr-window 0 --init-from-ar "$AR"         # Table 7: -RPR
  train saic_noft $SAIC --group-size $K --p-hybr 0.5                                              # Table 7: -FT
fi

# 4. decode and score the test split: decode_score ID CHECKPOINT GENERATE-ARGS... (examples/lib.sh) ->
#    $RUN/gen_ID.txt, $RUN/score_ID.json ($LABEL: the table row), decoded again on every run
GEN_TASK="--task captioning --max-len-b 30"; SCORER="python -m fairseq_nar_caption.cli.score"; SCORE_QUIET=2
SCORE_SKIP=0
echo "== decode and score the test split"
LABEL="AIC beam 5" decode_score ar_b5 "$AR" --beam 5
LABEL="AIC greedy" decode_score ar_b1 "$AR" --beam 1
for m in "5 5" "5 1" "1 1"; do
  set -- $m
  LABEL="SAIC k=$K (M_out=$1, M_fill=$2)" decode_score "saic_$1_$2" "$RUN/saic/checkpoint_best.pt" \
    --generator outline-fill --outline-beam "$1" --fill-beam "$2"
done
if [ "${ABLATIONS:-0}" = 1 ]; then
  ABL="saic_raw saic_seqdist saic_k2 saic_k3"
fi
[ "${TABLE7:-0}" = 1 ] && ABL="${ABL:-} saic_nocl saic_norpr saic_noft"
if [ -n "${ABL:-}" ]; then
  for name in $ABL; do
    LABEL="$name (1,1)" decode_score "${name}_1_1" "$RUN/$name/checkpoint_best.pt" --generator outline-fill \
      --outline-beam 1 --fill-beam 1
  done
fi
python -m fairseq_nar_caption.cli.table "${SCORES[@]}" --out "$RUN/scores.md"

# 5. batch-1 latency (encoder included, warm-up excluded) and throughput, CPU
echo "== benchmark"
S="--path $RUN/saic/checkpoint_best.pt --max-len-b 30 --generator outline-fill"
ROWS=(--row "AIC beam 5=--path $AR --beam 5 --max-len-b 30"
  --row "AIC greedy=--path $AR --beam 1 --max-len-b 30"
  --row "SAIC k$K (5,5)=$S --outline-beam 5 --fill-beam 5"
  --row "SAIC k$K (5,1)=$S --outline-beam 5 --fill-beam 1"
  --row "SAIC k$K (1,1)=$S --outline-beam 1 --fill-beam 1")
if [ "${ABLATIONS:-0}" = 1 ]; then  # Table 6: speed of k = 2, 3
  for k in 2 3; do
    ROWS+=(--row "SAIC k$k (1,1)=--path $RUN/saic_k$k/checkpoint_best.pt --max-len-b 30 --generator outline-fill \
--outline-beam 1 --fill-beam 1")
  done
fi
python -m fairseq_nar_caption.cli.benchmark "$DATA" --subset test --metrics Bleu,METEOR,CIDEr-D "${ROWS[@]}" \
  --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md" 2> /dev/null | grep -v "^\[benchmark\]"
