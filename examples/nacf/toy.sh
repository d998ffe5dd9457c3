#!/usr/bin/env bash
# NACF on the toy video benchmark, 2 CPU cores: AR-B (teacher / baseline), NA-B (λ = 0),
# NACF (λ = 0.8), both NAR models initialised from AR-B; then every decoding algorithm,
# scores, and batch-1 latency.  Outputs land in $RUN (default runs/nacf_toy); results.md
# collects the tables.  Each training is skipped when its checkpoint exists.
#   bash examples/nacf/toy.sh            (data: data/toy/videos, made by nar-caption-toy-data)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
DATA=${DATA:-data/toy/videos}; RUN=${RUN:-runs/nacf_toy}; mkdir -p "$RUN"
U="$PWD/fairseq_nar_caption"
FEATS="--feature-files appearance.h5,motion.h5"
SIZE="--embed-dim 256 --ffn-embed-dim 1024 --attention-heads 4 --dropout 0.3"
OPT="--optimizer adam --adam-betas (0.9,0.98) --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 --clip-norm 1.0"
TRAIN="--task captioning $FEATS $SIZE $OPT --batch-size 64 --num-workers 0 --valid-subset val \
  --no-epoch-checkpoints --best-checkpoint-metric loss --cpu --no-progress-bar --log-interval 100 --seed 1"

source examples/lib.sh  # train NAME ARGS...
python -m fairseq_nar_caption.cli.make_toy_data --out "$(dirname "$DATA")" > /dev/null
train arb --arch nacf_arb --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-epoch ${AR_EPOCHS:-12}
NAR="--arch nacf --criterion nacf_loss --mask-ratio-low 0.35 --mask-ratio-high 0.9 --init-from-ar $RUN/arb/checkpoint_best.pt --max-epoch ${NAR_EPOCHS:-20}"
train nab $NAR --vis-weight 0
train nacf $NAR --vis-weight 0.8

SCORES=()
score() {  # score ID CHECKPOINT GENERATE-ARGS...   ($LABEL names the table row)
  local name=$LABEL ckpt=$2
  SCORES+=("$RUN/score_$1.json")
  [ -f "$RUN/score_$1.json" ] && return 0
  fairseq-generate "$DATA" --user-dir "$U" --task captioning $FEATS --path "$ckpt" --gen-subset test \
    --batch-size 50 --cpu "${@:3}" > "$RUN/gen_$1.txt" 2> /dev/null
  python -m fairseq_nar_caption.cli.score --refs "$DATA/test_refs.json" --generate-output "$RUN/gen_$1.txt" \
    --train-manifest "$DATA/train.tsv" --dict "$DATA/dict.txt" --name "$name" --json-out "$RUN/score_$1.json" \
    > /dev/null 2>&1
}
T="--teacher-path $RUN/arb/checkpoint_best.pt"
echo "== decode and score the test split (T=5, B=6, q=1; AR-B teacher rescoring unless noted)"
LABEL="AR-B beam 5" score arb_b5 "$RUN/arb/checkpoint_best.pt" --beam 5 --max-len-b 30
LABEL="AR-B beam 1" score arb_b1 "$RUN/arb/checkpoint_best.pt" --beam 1 --max-len-b 30
LABEL="NA-B (MP)" score nab_mp "$RUN/nab/checkpoint_best.pt" --generator mp $T
LABEL="NACF mp (= NA-B + Lvis)" score nacf_mp "$RUN/nacf/checkpoint_best.pt" --generator mp $T
for g in ef l2r ct-mp ct-ef ct-l2r; do LABEL="NACF $g" score "nacf_$g" "$RUN/nacf/checkpoint_best.pt" --generator $g $T; done
LABEL="NACF ct-mp, no teacher" score nacf_ct-mp_noteacher "$RUN/nacf/checkpoint_best.pt" --generator ct-mp
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
