#!/usr/bin/env bash
# NACF on the toy video benchmark, 2 CPU cores: AR-B (teacher / baseline), NA-B (λ = 0),
# NACF (λ = 0.8), both NAR models initialised from AR-B; then every decoding algorithm,
# scores, and batch-1 latency.  Outputs land in $RUN (default runs/nacf_toy); results.md
# collects the tables.  Each training is skipped when its checkpoint exists.
#   bash examples/nacf/toy.sh            (data: data/toy/videos, made by nar-caption-toy-data)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
source examples/lib.sh  # train, decode_score, the shared flags
DATA=${DATA:-data/toy/videos}; RUN=${RUN:-runs/nacf_toy}; mkdir -p "$RUN"
FEATS="--feature-files appearance.h5,motion.h5"
SIZE="--embed-dim 256 --ffn-embed-dim 1024 --attention-heads 4 --dropout 0.3"
TRAIN="--task captioning $FEATS $SIZE $OPT_TOY $TOY_FLAGS --best-checkpoint-metric loss --log-interval 100 --seed 1"

python -m fairseq_nar_caption.cli.make_toy_data --out "$(dirname "$DATA")" > /dev/null
train arb --arch nacf_arb $XENT --max-epoch ${AR_EPOCHS:-12}
NAR="--arch nacf --criterion nacf_loss --mask-ratio-low 0.35 --mask-ratio-high 0.9 --init-from-ar $RUN/arb/checkpoint_best.pt --max-epoch ${NAR_EPOCHS:-20}"
train nab $NAR --vis-weight 0
train nacf $NAR --vis-weight 0.8

# decode_score ID CHECKPOINT GENERATE-ARGS... (examples/lib.sh): $RUN/gen_ID.txt, $RUN/score_ID.json ($LABEL: the
# table row), skipped when the score exists
GEN_TASK="--task captioning $FEATS"; SCORER="python -m fairseq_nar_caption.cli.score"; SCORE_QUIET=2
T="--teacher-path $RUN/arb/checkpoint_best.pt"
echo "== decode and score the test split (T=5, B=6, q=1; AR-B teacher rescoring unless noted)"
LABEL="AR-B beam 5" decode_score arb_b5 "$RUN/arb/checkpoint_best.pt" --beam 5 --max-len-b 30
LABEL="AR-B beam 1" decode_score arb_b1 "$RUN/arb/checkpoint_best.pt" --beam 1 --max-len-b 30
LABEL="NA-B (MP)" decode_score nab_mp "$RUN/nab/checkpoint_best.pt" --generator mp $T
LABEL="NACF mp (= NA-B + Lvis)" decode_score nacf_mp "$RUN/nacf/checkpoint_best.pt" --generator mp $T
for g in ef l2r ct-mp ct-ef ct-l2r; do
  LABEL="NACF $g" decode_score "nacf_$g" "$RUN/nacf/checkpoint_best.pt" --generator $g $T
done
LABEL="NACF ct-mp, no teacher" decode_score nacf_ct-mp_noteacher "$RUN/nacf/checkpoint_best.pt" --generator ct-mp
python -m fairseq_nar_caption.cli.table "${SCORES[@]}" --out "$RUN/scores.md"

echo "== batch-1 latency (CPU)"
ROWS=(--row "AR-B beam 5=--path $RUN/arb/checkpoint_best.pt --beam 5 --max-len-b 30 $FEATS"
      --row "AR-B beam 1=--path $RUN/arb/checkpoint_best.pt --beam 1 --max-len-b 30 $FEATS")
for t in 1 2 3 5; do for b in 1 3 6; do
  ROWS+=(--row "CT-MP T=$t B=$b=--path $RUN/nacf/checkpoint_best.pt --generator ct-mp --nar-iterations $t --length-beam $b $T $FEATS")
done; done
ROWS+=(--row "CT-MP T=2 B=6 no teacher=--path $RUN/nacf/checkpoint_best.pt --generator ct-mp --nar-iterations 2 --length-beam 6 $FEATS")
python -m fairseq_nar_caption.cli.benchmark "$DATA" --subset test "${ROWS[@]}" --metrics Bleu,METEOR,CIDEr-D \
  --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md" 2> "$RUN/benchmark.log" | grep -v "^\[benchmark\]"
