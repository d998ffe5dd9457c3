#!/usr/bin/env bash
# How much RDT uses its retrieved sentence (issue #23, examples/rdt/README.md "Making the retrieved sentence matter"):
# one RDT training with the arena's recipe at the demo's scale, then the test split decoded with each condition.
#
#   bash examples/rdt/condition.sh NAME [fairseq-train options...]
#
# e.g.  RDT_CONDITION=paper bash examples/rdt/condition.sh paper
#       bash examples/rdt/condition.sh copy                        (the recipe's default, RDT_CONDITION=copy)
#       RDT_CONDITION=paper bash examples/rdt/condition.sh trained_none --retrieval-train-condition none
#       TAUS="1 0.3" bash examples/rdt/condition.sh copy            (also edit the retrieved sentence from t' = 0.3)
#
# Needs an arena run (examples/arena/coco_concepts.sh or arena.sh) for the AR teacher, its distilled split and the
# retrieval file.  Environment: ARENA (default runs/coco_concepts_demo), DATA (data/coco-concepts),
# KD (train_distill_$(basename $ARENA)), RDT_SEQ_LEN (32; the toy: 24), RDT_UPDATES (450), SEED (1),
# RDT_CONDITION (copy | paper), CONDS (retrieved random none reference: --retrieval-condition), TAUS (1:
# --diffusion-start-time), OUT (runs/rdt_condition).  Training is skipped when done; a decode when its score exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source examples/lib.sh; demo_scale
NAME=${1:?usage: bash examples/rdt/condition.sh NAME [fairseq-train options...]}; shift
ARENA=${ARENA:-runs/coco_concepts_demo}; DATA=${DATA:-data/coco-concepts}; OUT=${OUT:-runs/rdt_condition}
KD=${KD:-train_distill_$(basename "$ARENA")}; RDT_SEQ_LEN=${RDT_SEQ_LEN:-32}; RDT_UPDATES=${RDT_UPDATES:-450}
AR="$ARENA/ar/checkpoint_best.pt"; RET="$(cd "$ARENA" && pwd)/retrieval.json"; FEATS=; NAR_UPDATES=300
unset NAR_EPOCHS  # the fixed update budget above, even with NAR_EPOCHS exported by the caller
for f in "$AR" "$RET" "$DATA/$KD.tsv"; do
  [ -f "$f" ] || { echo "condition.sh: $f does not exist: run the arena first (ARENA=$ARENA)" >&2; exit 2; }
done
source examples/arena/recipe.sh  # RDT_FLAGS (RDT_CONDITION)
TRAIN="$COMMON --seed ${SEED:-1}"; TRAIN_DIR=$OUT; TRAIN_LOGS=$OUT/logs
train "$NAME" $RDT_FLAGS --train-subset "$KD" "$@"
for tau in ${TAUS:-1}; do
  for c in ${CONDS:-retrieved random none reference}; do
    id="$NAME.$c$([ "$tau" = 1 ] || echo ".tau$tau")"
    [ -f "$OUT/$id.json" ] && continue
    fairseq-generate "$DATA" --user-dir "$U" --task captioning --path "$OUT/$NAME/checkpoint_best.pt" \
      --retrieval-file "$RET" --generator diffusion --diffusion-steps 10 --diffusion-eos-fallback \
      --diffusion-start-time "$tau" --retrieval-condition "$c" --gen-subset test --batch-size 100 --cpu \
      > "$OUT/$id.txt" 2> "$OUT/logs/$id.log" || { tail -n 15 "$OUT/logs/$id.log" >&2; exit 1; }
    nar-caption-score --refs "$DATA/test_refs.json" --generate-output "$OUT/$id.txt" --metrics Bleu CIDEr-D \
      --name "$id" --json-out "$OUT/$id.json" --no-progress > /dev/null 2>> "$OUT/logs/$id.log"
  done
done
python - "$OUT" "$NAME" <<'PY'
import glob, json, os, sys
out, name = sys.argv[1:]
for path in sorted(glob.glob(os.path.join(out, f"{name}.*.json"))):
    j = json.load(open(path))
    s = j["scores"]
    print(f"{os.path.basename(path)[:-5]:40s} CIDEr-D {100 * s['CIDEr-D']:5.1f}  B4 {100 * s['Bleu_4']:4.1f}  "
          f"repeat {100 * s['Repeat']:4.1f} %  ({j['num_images']} images)")
PY
