#!/usr/bin/env bash
# make demo: toy data → train the AR baseline → decode the test split → score →
# trivial baselines → latency/throughput benchmark table.  Each stage is skipped
# when its output exists (delete runs/demo to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
USER_DIR="$PWD/fairseq_nar_caption"
DATA=data/toy/images
RUN=runs/demo
mkdir -p "$RUN"
SECONDS=0

echo "== 1. toy benchmark (deterministic, seed 1)"
python -m fairseq_nar_caption.cli.make_toy_data --out data/toy

echo "== 2. train the AR baseline (ar_caption_tiny, 3 epochs) on toy images"
if [ ! -f "$RUN/ar/checkpoint_best.pt" ]; then
  EPOCHS=3 bash examples/ar_baseline/train_toy.sh "$DATA" "$RUN/ar" 2>&1 | tee "$RUN/train.log" | grep -E "valid on|done training" || true
fi
[ -f "$RUN/ar/checkpoint_best.pt" ] || { echo "training failed, see $RUN/train.log"; exit 1; }

echo "== 3. decode the test split with fairseq-generate (beam 5)"
fairseq-generate "$DATA" --user-dir "$USER_DIR" --task captioning --path "$RUN/ar/checkpoint_best.pt" \
  --gen-subset test --beam 5 --max-len-b 30 --batch-size 64 --cpu > "$RUN/generate_test.txt"
grep -c '^H-' "$RUN/generate_test.txt" | sed 's/^/hypotheses: /'

echo "== 4. score against all references"
python -m fairseq_nar_caption.cli.score --refs "$DATA/test_refs.json" --manifest "$DATA/test.tsv" \
  --generate-output "$RUN/generate_test.txt" --train-manifest "$DATA/train.tsv" --dict "$DATA/dict.txt" \
  --name "AR baseline, beam 5" --json-out "$RUN/scores_test.json"

echo "== 5. trivial baselines on the same split"
python -m fairseq_nar_caption.cli.baselines "$DATA" --split test --json-out "$RUN/baselines_test.json"

echo "== 6. latency / throughput (batch 1, CPU)"
python -m fairseq_nar_caption.cli.benchmark "$DATA" --subset test \
  --row "AR beam 5=--path $RUN/ar/checkpoint_best.pt --beam 5 --max-len-b 30" \
  --row "AR greedy=--path $RUN/ar/checkpoint_best.pt --beam 1 --max-len-b 30" \
  --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md"
echo "demo finished in ${SECONDS}s; outputs in $RUN/"
