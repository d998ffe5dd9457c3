#!/usr/bin/env bash
# make demo: the arena, short — toy benchmark → AR model (teacher) → one distillation → one model
# per non-autoregressive paradigm (NACF, SAIC, NARVL-CTC, RDT) on the same features, sizes and
# distilled data → one interleaved benchmark run → table + speed–quality chart.
# Every stage is skipped when its output exists (make clean-demo starts over); framework logs
# are in runs/demo/logs/.  The full arena (longer training, more rows): examples/arena/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
SECONDS=0
mkdir -p runs/demo/logs
echo "== toy benchmark (deterministic, seed 1; log: runs/demo/logs/toy_data.log)"
python -m fairseq_nar_caption.cli.make_toy_data --out data/toy > runs/demo/logs/toy_data.log 2>&1 \
  || { tail -n 15 runs/demo/logs/toy_data.log >&2; exit 1; }
source examples/lib.sh  # demo_scale: the arena's short-training settings (so the whole arena fits ~15 min on 2 cores)
demo_scale
DATA=data/toy/images RUN=runs/demo TITLE="make demo: the arena (short training)" \
  bash examples/arena/arena.sh
echo "demo finished in ${SECONDS}s; outputs in runs/demo/ (chart: runs/demo/benchmark.png)"
