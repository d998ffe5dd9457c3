#!/usr/bin/env bash
# The arena on real COCO caption language: nar-caption-concepts builds the benchmark from a COCO captions
# JSON (per image, one held-out caption's content words as an unordered set of concept vectors, a stand-in
# for a detector; the other captions are the targets and references: real language, not real pixels),
# then examples/arena/arena.sh runs every paradigm on it, as on the toy.
#
#   bash examples/arena/coco_concepts.sh CAPTIONS.json      e.g. captions_train2014.json / captions_val2014.json
#
# Configuration (environment):
#   SCALE=demo|full  demo (default): make demo's settings (examples/lib.sh demo_scale: d 128, one row per
#                    paradigm) but the AR models' cap of arena.sh (30 epochs: they stop at their validation
#                    plateau); full: arena.sh's own defaults (every row).  At both scales every NAR row, like the
#                    AR models, trains to its validation plateau (NAR_EPOCHS=40 passes at most, NAR_PATIENCE 3)
#   IMAGES=8000,500,1000   images per split (the benchmark decodes every test image: BENCH_ITEMS);  CONCEPTS="--drop 0 --distractors 0"  the detector noise;
#   DATA (default data/coco-concepts), RUN (default runs/coco_concepts_$SCALE); anything arena.sh reads.
# The benchmark is built once (delete $DATA to rebuild); the arena's steps are skipped when done.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
CAPTIONS=${1:?usage: bash examples/arena/coco_concepts.sh CAPTIONS.json (a COCO captions file)}
SCALE=${SCALE:-demo}; IMAGES=${IMAGES:-8000,500,1000}; CONCEPTS=${CONCEPTS:-}
export DATA=${DATA:-data/coco-concepts} RUN=${RUN:-runs/coco_concepts_$SCALE}
export AR_EPOCHS=${AR_EPOCHS:-30}  # the AR models train to their validation plateau (demo_scale's cap, 6, stops them early here)
# ... and so do the NAR rows (at most 40 passes; NAR_EPOCHS= empty: NAR_UPDATES updates each, as in make demo)
export NAR_EPOCHS=${NAR_EPOCHS-40}
export RDT_SEQ_LEN=${RDT_SEQ_LEN:-32}  # RDT's caption slots hold the distillation's longest caption (28 words + </s>)
export BENCH_ITEMS=${BENCH_ITEMS:-$(( $(echo "$IMAGES" | cut -d, -f3) ))}  # every test image
source examples/lib.sh  # demo_scale
case "$SCALE" in
  demo) demo_scale ;;
  full) ;;
  *) echo "coco_concepts.sh: SCALE must be demo or full, got '$SCALE'" >&2; exit 2 ;;
esac
if [ ! -f "$DATA/dict.txt" ]; then
  echo "== real-language benchmark: $CAPTIONS -> $DATA (images $IMAGES)"
  mkdir -p "$(dirname "$DATA")"
  nar-caption-concepts --captions "$CAPTIONS" --out "$DATA" --images "$IMAGES" $CONCEPTS
fi
TITLE=${TITLE:-"the arena on COCO caption language ($SCALE)"} bash examples/arena/arena.sh
# the human reference point: each test image's held-out caption scored against its other captions
nar-caption-score --refs "$DATA/test_refs.json" --results "$DATA/test_held_out.json" --name "held-out human caption" \
  --metrics Bleu METEOR CIDEr-D --json-out "$RUN/human.json" --no-progress > "$RUN/logs/human.log" 2>&1 \
  || { tail -n 15 "$RUN/logs/human.log" >&2; exit 1; }
python -c "import json, sys; s = json.load(open(sys.argv[1]))['scores']
print('== held-out human caption (every test image):', ', '.join(f'{k} {100 * s[k]:.1f}' for k in ('Bleu_4', 'METEOR', 'CIDEr-D')))" "$RUN/human.json"
