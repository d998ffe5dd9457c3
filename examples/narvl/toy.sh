#!/usr/bin/env bash
# NARVL on the toy vision-language benchmark (96x96 images), 2 CPU cores, one thread per process:
#   0. the VL data folder (scripts/prepare_vl_toy.py: OFA-column TSVs, sentencepiece, dict with <bin_i>),
#   1. per task (caption, vqa, grounding, entailment): the AR counterpart narvl_ar_tiny (teacher and
#      baseline) and NARVL narvl_tiny (N learnable queries, Query-CTC, Eq. 1),
#   2. sequence-level KD for caption and VQA: the AR teacher's outputs (beam 5) as NARVL targets (Table 9),
#   3. decoding of the test splits (AR beam 5 / greedy, NARVL argmax+collapse) scored by cli/score_vl.py,
#   4. batch-1 latency and throughput per task (cli/benchmark.py; speed-ups relative to AR beam 5),
#      plus CTC prefix beam search (Table 11) on captioning.
# ABLATIONS=1 also runs examples/narvl/ablations.sh (--loss ce: Table 8, N: Table 10, decoder input =
# encoder output: Table 7; on VQA unless TASK=caption).  TASKS="caption vqa" restricts the tasks.  Outputs in $RUN (default
# runs/narvl_toy); each training / decode / score / benchmark is skipped when its output exists.
#   bash examples/narvl/toy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source examples/lib.sh  # train, decode_score, vl_scorer, the shared flags
IMAGES=${IMAGES:-data/toy/images}; DATA=${DATA:-data/toy/vl}; RUN=${RUN:-runs/narvl_toy}; mkdir -p "$RUN"
TASKS=${TASKS:-caption vqa grounding entailment}
BINS=64
VL="--task vision_language --image-dir ../images/pixels --patch-image-size 96 --num-bins $BINS"
TRAIN="$VL $OPT_TOY $TOY_FLAGS --best-checkpoint-metric loss --log-interval 50 --seed 1"
declare -A N=([caption]=24 [vqa]=6 [grounding]=7 [entailment]=2)           # queries per task (see README)
declare -A EPOCHS=([caption]=${CAPTION_EPOCHS:-3} [vqa]=${VQA_EPOCHS:-5} [grounding]=${GROUNDING_EPOCHS:-8} \
  [entailment]=${ENTAILMENT_EPOCHS:-4})
declare -A MAXLEN=([caption]=30 [vqa]=6 [grounding]=6 [entailment]=3)

vl_train() {  # vl_train NAME TASK ARGS...   (skipped when finished; an interrupted run resumes from checkpoint_last)
  local name=$1 task=$2; shift 2
  train "$name" --vl-task "$task" --max-epoch "${EPOCHS_OVERRIDE:-${EPOCHS[$task]}}" "$@"
}
[ -f "$IMAGES/dict.txt" ] || python -m fairseq_nar_caption.cli.make_toy_data --out "$(dirname "$IMAGES")" > /dev/null
[ -f "$DATA/prep.json" ] || python scripts/prepare_vl_toy.py --images "$IMAGES" --out "$DATA" --num-bins $BINS

AR_ARGS="--arch narvl_ar_tiny $XENT"
NAR_ARGS="--arch narvl_tiny --criterion query_ctc --label-smoothing 0.1"
for t in $TASKS; do
  vl_train "ar_$t" "$t" $AR_ARGS
  vl_train "nar_$t" "$t" $NAR_ARGS --num-queries "${N[$t]}"
done
# 2. KD (caption, VQA): teacher outputs -> <task>_train_distill.tsv -> NARVL trained on them
for t in caption vqa; do
  case " $TASKS " in *" $t "*) ;; *) continue ;; esac
  if [ ! "$DATA/${t}_train_distill.tsv" -nt "$RUN/ar_$t/checkpoint_best.pt" ]; then
    echo "== distill $t"
    python -m fairseq_nar_caption.cli.distill_vl "$DATA" --path "$RUN/ar_$t/checkpoint_best.pt" --vl-task "$t" --overwrite \
      -- $VL --max-len-b "${MAXLEN[$t]}" 2> "$RUN/distill_$t.log"
  fi
  # caption: the distilled split has one row per image (raw: five): 5x the epochs = the same updates
  k=1; [ "$t" = caption ] && k=5
  EPOCHS_OVERRIDE=$(( k * ${EPOCHS[$t]} )) vl_train "nar_${t}_kd" "$t" $NAR_ARGS --num-queries "${N[$t]}" \
    --train-subset train_distill
done
# Tables 7, 8, 10: examples/narvl/ablations.sh (TASK=vqa by default, TASK=caption for the paper's setting)
if [ "${ABLATIONS:-0}" = 1 ]; then RUN="$RUN" bash examples/narvl/ablations.sh; fi

# 3. decode + score the test splits
SUMMARY="$RUN/scores.txt"
SCORE_QUIET=1
score() {  # score ID TASK CHECKPOINT GENERATE-ARGS...: decode_score (examples/lib.sh) with the task's scorer
  local id=$1 task=$2; shift 2
  vl_scorer "$task"
  GEN_TASK="$VL --vl-task $task --post-process sentencepiece --max-len-b ${MAXLEN[$task]}" LABEL=$id \
    decode_score "$id" "$@"
}
echo "== decode and score the test splits"
for t in $TASKS; do
  score "ar_${t}_b5" "$t" "$RUN/ar_$t/checkpoint_best.pt" --beam 5
  score "ar_${t}_b1" "$t" "$RUN/ar_$t/checkpoint_best.pt" --beam 1
  score "nar_$t" "$t" "$RUN/nar_$t/checkpoint_best.pt" --generator ctc
  [ -f "$RUN/nar_${t}_kd/checkpoint_best.pt" ] && score "nar_${t}_kd" "$t" "$RUN/nar_${t}_kd/checkpoint_best.pt" \
    --generator ctc
done
case " $TASKS " in *" caption "*)
  score nar_caption_ctcbeam5 caption "$RUN/nar_caption/checkpoint_best.pt" --generator ctc --ctc-beam 5  # Table 11
  ;;
esac
for f in "$RUN"/score_*.json; do
  python -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['name'], r['task'], \
' '.join(f'{k}={100*v:.1f}' for k,v in r['scores'].items()), ('malformed=%d' % r['malformed']) if 'malformed' in r else '')" "$f"
done > "$SUMMARY"
cat "$SUMMARY"

# 4. batch-1 latency (encoder included, warm-up excluded) + throughput, CPU; quality of the batch-1 outputs
#    from the task's own metric (vision_language.benchmark_scores)
[ "${BENCHMARK:-1}" = 1 ] || exit 0
echo "== benchmark"
for t in $TASKS; do
  [ -f "$RUN/benchmark_$t.json" ] && continue
  G="$VL --vl-task $t --max-len-b ${MAXLEN[$t]}"
  ROWS=(--row "AR beam 5=--path $RUN/ar_$t/checkpoint_best.pt $G --beam 5"
    --row "AR greedy=--path $RUN/ar_$t/checkpoint_best.pt $G --beam 1"
    --row "NARVL ctc=--path $RUN/nar_$t/checkpoint_best.pt $G --generator ctc")
  [ "$t" = caption ] && ROWS+=(--row "NARVL ctc beam 5=--path $RUN/nar_$t/checkpoint_best.pt $G --generator ctc --ctc-beam 5")
  python -m fairseq_nar_caption.cli.benchmark "$DATA" --subset test --metrics Bleu,CIDEr-D "${ROWS[@]}" \
    --max-items ${BENCH_ITEMS:-200} --out-json "$RUN/benchmark_$t.json" --out-md "$RUN/benchmark_$t.md" \
    2> /dev/null | grep -v "^\[benchmark\]"
done
