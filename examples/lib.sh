# The recipes' library, sourced (not run) by every recipe in examples/ before it sets anything of its own:
#   source examples/lib.sh                (recipes that cd to the repository root)
#   source "$(dirname "$0")/../lib.sh"    (recipes that keep the caller's directory)
# It defines U, the shared flag sets, train, decode_score and the console helpers, and resets the settings
# below to their defaults.  DATA, RUN and the settings are read when a function runs, so a recipe sets them
# once, and one call may change one for itself:  LABEL="AR beam 5" decode_score ...

# the plugin (--user-dir)
U="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fairseq_nar_caption"

# --- shared flag sets (word-split where used, as fairseq's own flags are) ---
ADAM="--optimizer adam --adam-betas (0.9,0.98)"
CLIP="--clip-norm 1.0"
INV_SQRT="--lr-scheduler inverse_sqrt"
OPT="$ADAM $CLIP $INV_SQRT"                    # + --lr and --warmup-updates
OPT_TOY="$OPT --lr 1e-3 --warmup-updates 200"  # the toy recipes' schedule (AR baselines, NACF, NARVL)
XENT="--criterion label_smoothed_cross_entropy --label-smoothing 0.1"  # the AR models' loss
SELECT="--eval-cider --best-checkpoint-metric cider --maximize-best-checkpoint-metric"  # best by validation CIDEr-D
DROPOUT="--dropout 0.1 --attention-dropout 0.1"
VALID="--valid-subset val --no-epoch-checkpoints"
TOY_BSZ=64
TOY_FLAGS="--batch-size $TOY_BSZ --num-workers 0 $VALID --cpu --no-progress-bar"  # CPU training on a toy benchmark

# --- the demo's scale: make demo (scripts/demo.sh) and examples/arena/coco_concepts.sh's SCALE=demo ---
demo_scale() {  # exports the arena's short-training settings; a setting already in the environment wins
  # a small model for every row (d 128, 1 encoder + 2 decoder layers), short training (the AR models: to their
  # validation plateau, at most 6 epochs), one row per paradigm
  export SIZE="${SIZE:---embed-dim 128 --ffn-embed-dim 512 --attention-heads 4 --encoder-layers 1 --decoder-layers 2}"
  export ROWS=demo AR_EPOCHS="${AR_EPOCHS:-6}" AR_PATIENCE="${AR_PATIENCE:-2}" AR_BEAMS="${AR_BEAMS:-1 5}" NAR_UPDATES="${NAR_UPDATES:-300}" BENCH_ITEMS="${BENCH_ITEMS:-100}" \
    PASSES=1 METRICS=Bleu,METEOR,CIDEr-D
}

# shallow_size SIZE: the model size flags with one decoder layer and the encoder deeper by the removed decoder
# layers' parameters (Kasai et al. 2021's deep-encoder / shallow-decoder AR model at the same budget): a decoder
# layer holds 8d² + 2·d·ffn weights (self- and cross-attention, FFN), an encoder layer 4d² + 2·d·ffn
shallow_size() {
  python - "$1" <<'PY'
import re, sys
size = sys.argv[1]
get = lambda name, default: int((re.search(rf"--{name} (\d+)", size) or [None, default])[1])
d, f = get("embed-dim", 512), get("ffn-embed-dim", 2048)
enc, dec = get("encoder-layers", 6), get("decoder-layers", 6)
extra = round((dec - 1) * (8 * d * d + 2 * d * f) / (4 * d * d + 2 * d * f))
size = re.sub(r"--encoder-layers \d+ ?", "", re.sub(r"--decoder-layers \d+ ?", "", size)).strip()
print(f"{size} --encoder-layers {enc + extra} --decoder-layers 1")
PY
}

# --- settings (defaults) ---
TRAIN=          # train: the recipe's common fairseq-train flags
TRAIN_DIR=      # train: where the runs go (empty: $RUN)
TRAIN_LOGS=     # train: the folder of the NAME.log files (empty: the runs' folder); -: no log file (see train)
VALID_LINES=0   # train: 1 = one console line per validation (the arena's console)
CLOCK=0         # step: 1 = each console line starts with the seconds since the recipe started
GEN_TASK="--task captioning"      # decode_score: fairseq-generate's task flags (features, retrieval file, ...)
GEN_BATCH="--batch-size 50 --cpu" # decode_score: fairseq-generate's batch and device
GEN_PREFIX=gen                    # decode_score: the decode lands in PREFIX_ID.txt
SCORER=nar-caption-score          # decode_score: the scoring command
SCORE_ARGS=()   # decode_score: the scorer's inputs, an array (empty: captioning's --refs, --train-manifest and --dict
                #   of $DATA)
SCORE_MANIFEST= # decode_score, captioning: --manifest (sample id -> item) when set
SCORE_METRICS=  # decode_score, captioning: --metrics when set (e.g. "Bleu CIDEr-D")
SCORE_DIR=      # decode_score: where the decodes and scores go (empty: $RUN)
SCORE_JSON=1    # decode_score: 0 = no --json-out (then nothing is skipped)
SCORE_SKIP=1    # decode_score: 1 = skipped when its score JSON exists, 0 = decoded and scored again
SCORE_QUIET=0   # decode_score: 1 = stderr of fairseq-generate and the scorer hidden, 2 = the scorer's stdout too
LABEL=          # decode_score: the row label (--name); none when empty
SCORES=()       # decode_score appends every score JSON (for cli/table.py)

# step MESSAGE...: one console line, "== MESSAGE" (CLOCK=1: "== [  12s] MESSAGE")
step() {
  if [ "$CLOCK" = 1 ]; then echo "== [$(printf '%4d' "$SECONDS")s] $*"; else echo "== $*"; fi
}

# valid_lines NAME: a fairseq-train log on stdin -> one console line per validation (epoch, loss, CIDEr-D, updates)
valid_lines() {
  grep --line-buffered -E "valid on 'val'" \
    | sed -u -E -e "s/.*epoch ([0-9]+) \| valid on 'val' subset \| loss ([0-9.]+)(.*\| cider ([0-9.]+))?.*num_updates ([0-9]+).*/     $1: epoch \1, valid loss \2, CIDEr-D \4, \5 updates/" -e "s/, CIDEr-D ,/,/"
}

# train NAME ARGS...: fairseq-train "$DATA" --user-dir "$U" $TRAIN --save-dir "$TRAIN_DIR/NAME" ARGS, logged
# (appended) in $TRAIN_LOGS/NAME.log.  Skipped when that run finished ("done training" in its log and its
# checkpoint_best.pt present); an interrupted run resumes from its checkpoint_last.pt (fairseq's default), so a
# stopped recipe can simply be started again.  A failed run shows the last lines of its log and returns 1.
# The console: "train NAME (log: ...)", then fairseq's "done training" line, or with VALID_LINES=1 one line per
# validation.  TRAIN_LOGS=-: fairseq prints on the console, and nothing is skipped (fairseq resumes by itself).
train() {
  local name=$1; shift
  local dir=${TRAIN_DIR:-$RUN}; local logs=${TRAIN_LOGS:-$dir}
  if [ "$logs" = - ]; then
    fairseq-train "$DATA" --user-dir "$U" $TRAIN --save-dir "$dir/$name" "$@"; return
  fi
  local log="$logs/$name.log" ok=0
  if grep -qs "done training" "$log" && [ -f "$dir/$name/checkpoint_best.pt" ]; then
    step "$name: trained (skipping; $log)"; return 0
  fi
  step "train $name (log: $log)"
  mkdir -p "$logs"
  if [ "$VALID_LINES" = 1 ]; then
    fairseq-train "$DATA" --user-dir "$U" $TRAIN --save-dir "$dir/$name" "$@" >> "$log" 2>&1 &
    local pid=$!
    tail -n 0 --pid=$pid -F "$log" 2> /dev/null | valid_lines "$name" &
    local lines=$!
    wait $pid || ok=1
    wait $lines || true  # the console lines end with the training
  else
    fairseq-train "$DATA" --user-dir "$U" $TRAIN --save-dir "$dir/$name" "$@" >> "$log" 2>&1 || ok=1
  fi
  if [ $ok != 0 ]; then
    echo "training $name failed; last lines of $log:" >&2; tail -n 15 "$log" >&2; return 1
  fi
  [ "$VALID_LINES" = 1 ] || grep "done training" "$log"
}

# quietly LEVEL COMMAND...: COMMAND with its stderr hidden at LEVEL 1, stdout and stderr at LEVEL 2
quietly() {
  local q=$1; shift
  case $q in 0) "$@" ;; 1) "$@" 2> /dev/null ;; *) "$@" > /dev/null 2>&1 ;; esac
}

# decode_score ID CHECKPOINT GENERATE-ARGS...: decode the test split and score it
#   fairseq-generate "$DATA" --user-dir "$U" $GEN_TASK --path CHECKPOINT --gen-subset test $GEN_BATCH GENERATE-ARGS
#     > $SCORE_DIR/${GEN_PREFIX}_ID.txt
#   $SCORER --generate-output $SCORE_DIR/${GEN_PREFIX}_ID.txt "${SCORE_ARGS[@]}" [--name "$LABEL"]
#     [--json-out $SCORE_DIR/score_ID.json]
# and appends the JSON to SCORES (also when skipped).  The settings above make the recipes' differences:
# the scorer (nar-caption-score, python -m ...cli.score, cli/score_vl.py: vl_scorer), the file names, the
# label, batch and device, skipping, and what the console shows.
decode_score() {
  local id=$1 ckpt=$2; shift 2
  local dir=${SCORE_DIR:-$RUN}
  local gen="$dir/${GEN_PREFIX}_$id.txt" json="$dir/score_$id.json" out=() args=()
  if [ "$SCORE_JSON" != 0 ]; then
    out=(--json-out "$json"); SCORES+=("$json")
    if [ "$SCORE_SKIP" = 1 ] && [ -f "$json" ]; then return 0; fi
  fi
  if [ ${#SCORE_ARGS[@]} -gt 0 ]; then
    args=("${SCORE_ARGS[@]}")
  else
    args=(--refs "$DATA/test_refs.json" --train-manifest "$DATA/train.tsv" --dict "$DATA/dict.txt"
          ${SCORE_MANIFEST:+--manifest "$SCORE_MANIFEST"} ${SCORE_METRICS:+--metrics $SCORE_METRICS})
  fi
  quietly $(( SCORE_QUIET > 0 )) fairseq-generate "$DATA" --user-dir "$U" $GEN_TASK --path "$ckpt" --gen-subset test \
    $GEN_BATCH "$@" > "$gen"
  quietly "$SCORE_QUIET" $SCORER --generate-output "$gen" "${args[@]}" ${LABEL:+--name "$LABEL"} "${out[@]}"
}

# vl_scorer TASK: decode_score's scorer for a vision-language task of examples/narvl (cli/score_vl.py on
# $DATA/TASK_test.tsv with the images of $IMAGES/pixels and $BINS location bins; captioning: the COCO
# references and its metrics)
vl_scorer() {
  SCORER="python -m fairseq_nar_caption.cli.score_vl"
  SCORE_ARGS=(--task "$1" --tsv "$DATA/${1}_test.tsv" --image-dir "$IMAGES/pixels" --num-bins "$BINS")
  if [ "$1" = caption ]; then SCORE_ARGS+=(--refs "$DATA/caption_test_refs.json" --metrics Bleu METEOR CIDEr-D); fi
}
