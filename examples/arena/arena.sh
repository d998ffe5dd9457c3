#!/usr/bin/env bash
# The arena: every decoding paradigm on one feature folder, one AR teacher, one distilled
# training split, one interleaved benchmark run, one table and one speed–quality chart.
#
#   1. AR model (ar_caption, the baseline and the teacher) on the raw captions, trained until its validation
#      CIDEr-D (greedy) stops improving (AR_PATIENCE validations, at most AR_EPOCHS epochs); beside it the
#      shallow-decoder AR model (Kasai et al. 2021: one decoder layer, the encoder deeper by the removed layers'
#      parameters), the fast-AR competitor, trained the same way;
#   2. sequence-level distillation of every training item by the AR model (beam 5): train_distill;
#   3. the retrieval file RDT is conditioned on (nar-caption-retrieve);
#   4. one model per paradigm, all of the AR model's encoder and decoder size and dictionary,
#      all trained on train_distill: NACF (masked LM + visual words + length predictor, from the
#      AR weights), SAIC (group mask, k = $SAIC_K, from the AR weights), NARVL over features
#      (learnable queries + Query-CTC, from the AR weights), RDT (bit diffusion, retrieved-sentence
#      condition; its Semantic Transformer + Sentence Decoder blocks add up to the AR decoder depth),
#      DAG (a graph of 2 x 32 vertices and transitions, DA-Transformer's loss over every path, from the
#      AR weights; ROWS=full also trains it on the raw captions, dag_raw);
#   5. the AR models' decoding (beam size x length penalty: AR_BEAMS, AR_LENPENS) chosen on the val split
#      (nar-caption-select-decoding);
#   6. nar-caption-benchmark over all rows at once (rows interleaved, one thread, median + IQR,
#      decoder passes, bare-forward multiples, throughput at batch 64): every percentage is of the best AR
#      row, speed-ups and throughput ratios against it and against the shallow-decoder AR row (greedy);
#      markdown + JSON + two-panel Pareto PNG (batch-1 latency, throughput).
#
# Configuration (environment; defaults = the full toy-images arena of examples/arena/README.md):
#   DATA RUN FEATS SIZE AR_EPOCHS AR_PATIENCE AR_BEAMS AR_LENPENS NAR_UPDATES RDT_UPDATES SAIC_K BENCH_ITEMS
#   PASSES THREADS LENGTHS METRICS
#   ROWS=full|demo   (demo: one row per paradigm + AR greedy / beam 5)
#   GLAT=0.5         glancing training λ for NACF and NARVL (criterions/glancing.py; not in the papers);
#                    GLAT=0 is the papers' training (examples/arena/README.md: the measured effect)
#   NACF_POSITIONS=--scale-positions   NACF's position embeddings at the token scale (models/nacf.py);
#                    NACF_POSITIONS= is fairseq's AR convention, under which an all-<mask> input collapses
#   NAR_EPOCHS=N     the NAR rows' first stage like the AR row's: to its validation plateau (stopped after
#                    NAR_PATIENCE, 3, validations without a better CIDEr-D), at most N passes over the distilled
#                    split, instead of NAR_UPDATES updates (RDT_UPDATES); the SCST stage keeps SCST_UPDATES
#   NAR=0            stop after steps 1-3 (teacher, distillation, retrieval file)
#   SHALLOW=0        no shallow-decoder AR model and none of its rows (the teacher then trains with AR_THREADS, 2)
#   SCST=1           a second stage for the AR model and every NAR model: self-critical sequence training
#                    (CIDEr-D reward; the NAR models SCST_UPDATES, default NAR_UPDATES, the AR model to its
#                    validation plateau, at most AR_SCST_EPOCHS, 12; SCST_LR 5e-5, SCST_SAMPLES 5 per image,
#                    SCST_BASELINE mean); its rows are named after their cross-entropy rows + " + SCST"
# Every NAR model is validated by decoding (--eval-cider: CIDEr-D of the generator its main row uses, on
# the val split) and the benchmark decodes the checkpoint with the best validation CIDEr-D.
# Every step is skipped when its output exists (delete $RUN to start over); framework logs go to
# $RUN/logs/, the console shows one line per step and per validation.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
source examples/lib.sh  # train, step, the shared flags
DATA=${DATA:-data/toy/images}; RUN=${RUN:-runs/arena_images}
FEATS=${FEATS:-}                                   # e.g. --feature-files appearance.h5,motion.h5
SIZE=${SIZE:---embed-dim 256 --ffn-embed-dim 1024 --attention-heads 4 --encoder-layers 2 --decoder-layers 2}
# NAR budget: 600 updates ≈ 30 min per model at one thread with two trainings sharing 2 cores (toy images,
# 19 epochs of the 2000-item distilled split); RDT's cheaper updates: 1.5× as many (its curve is still
# steep at 600: examples/rdt/README.md)
# The AR models: at most AR_EPOCHS epochs, stopped after AR_PATIENCE validations without a better CIDEr-D
AR_EPOCHS=${AR_EPOCHS:-30}; AR_PATIENCE=${AR_PATIENCE:-3}; AR_BEAMS=${AR_BEAMS:-1 3 5}; AR_LENPENS=${AR_LENPENS:-0.6 1 1.4}
NAR_UPDATES=${NAR_UPDATES:-600}; RDT_UPDATES=${RDT_UPDATES:-$(( NAR_UPDATES * 3 / 2 ))}
SAIC_K=${SAIC_K:-2}; BENCH_ITEMS=${BENCH_ITEMS:-250}; PASSES=${PASSES:-2}; THREADS=${THREADS:-1}
LENGTHS=${LENGTHS:-8,16,30}; METRICS=${METRICS:-Bleu,METEOR,CIDEr-D}; ROWS=${ROWS:-full}; GLAT=${GLAT:-0.5}
NACF_POSITIONS=${NACF_POSITIONS---scale-positions}
LOGS="$RUN/logs"; mkdir -p "$LOGS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per training: two trainings share the 2 cores
SECONDS=0; CLOCK=1

[ -f "$DATA/dict.txt" ] || { step "toy benchmark"; python -m fairseq_nar_caption.cli.make_toy_data --out "$(dirname "$DATA")" > "$LOGS/toy_data.log"; }

AR="$RUN/ar/checkpoint_best.pt"; RET="$(cd "$RUN" && pwd)/retrieval.json"
source examples/arena/recipe.sh  # COMMON NAR_OPT and each paradigm's flags

# train NAME ARGS... (examples/lib.sh): fairseq-train into $RUN/NAME, log in $LOGS/NAME.log, one console line
# per validation; skipped once finished, an interrupted run resumes from its checkpoint_last.pt.
TRAIN="$COMMON --seed ${SEED:-1}"; TRAIN_LOGS=$LOGS; VALID_LINES=1

both() {  # both PID PID: wait for two background trainings, fail if either failed
  local ok=0; wait "$1" || ok=1; wait "$2" || ok=1
  [ $ok = 0 ] || { echo "a training failed (see above)" >&2; exit 1; }
}

# 1. the AR model (baseline and teacher) and the shallow-decoder AR model (one decoder layer; the encoder deeper by
#    the removed decoder layers' parameters: examples/lib.sh shallow_size), side by side, one thread each, on the raw
#    captions, each trained to its plateau: validated by greedy decoding (CIDEr-D), stopped after AR_PATIENCE
#    validations without a better one (at most AR_EPOCHS epochs); checkpoint_best.pt: the best validation CIDEr-D
AR_FLAGS="--arch ar_caption $XENT $OPT_TOY --max-epoch $AR_EPOCHS --patience $AR_PATIENCE $SELECT
  --eval-cider-args {\"beam\":1,\"max_len_b\":30}"
SHALLOW=${SHALLOW:-1}; SHALLOW_SIZE=$(shallow_size "$SIZE"); SCST=${SCST:-0}
if [ "$SHALLOW" = 1 ]; then
  OMP_NUM_THREADS=1 train ar $SIZE $AR_FLAGS & P1=$!
  OMP_NUM_THREADS=1 train ar_shallow $SHALLOW_SIZE $AR_FLAGS & P2=$!
  both $P1 $P2
else
  OMP_NUM_THREADS=${AR_THREADS:-2} train ar $SIZE $AR_FLAGS
fi

# 2. one distillation (beam 5), shared by every NAR row; the split is named after the run, so
#    several arenas can share one data folder
KD=${KD:-train_distill_$(basename "$RUN")}
if [ ! "$DATA/$KD.tsv" -nt "$AR" ]; then
  step "distill the training split with the AR model (beam 5) -> $DATA/$KD.tsv"
  OMP_NUM_THREADS=${AR_THREADS:-2} nar-caption-distill "$DATA" --path "$AR" --out-split "$KD" --overwrite -- $FEATS --max-len-b 28 > "$LOGS/distill.log" 2>&1 \
    || { tail -n 15 "$LOGS/distill.log" >&2; exit 1; }
fi

# 3. RDT's retrieved sentences (training items never retrieve their own captions)
if [ ! -f "$RET" ]; then
  step "retrieval file for RDT -> $RET"
  nar-caption-retrieve "$DATA" --splits train,val,test --k 20 --out "$RET" ${FEATS:+$FEATS} > "$LOGS/retrieve.log" 2>&1 \
    || { tail -n 15 "$LOGS/retrieve.log" >&2; exit 1; }
fi

# NAR=0 stops here: the teacher, its distillation and the retrieval file (what ablations.sh / orderings.sh need)
if [ "${NAR:-1}" = 0 ]; then step "NAR=0: teacher, distillation and retrieval file ready in $RUN"; exit 0; fi

# the AR models' decoding chosen on the val split (step 5): every beam size of AR_BEAMS (beyond 1: with every
# length penalty of AR_LENPENS); the recipe runs it beside DAG's training in the demo (a free core), else in step 5
choose() {  # choose NAME CHECKPOINT: $RUN/NAME_val_decoding.json; prints the chosen candidate's name
  local out="$RUN/$1_val_decoding.json" cand=()
  for b in $AR_BEAMS; do
    if [ "$b" = 1 ]; then cand+=(--candidate "greedy=--beam 1"); continue; fi
    for lp in $AR_LENPENS; do cand+=(--candidate "beam $b$([ "$lp" = 1 ] || echo " lenpen $lp")=--beam $b --lenpen $lp"); done
  done
  if [ ! "$out" -nt "$2" ]; then  # made again when its checkpoint is newer
    step "$1: decoding chosen on val ($(( ${#cand[@]} / 2 )) candidates; log: $LOGS/$1_val_decoding.log)" >&2
    OMP_NUM_THREADS=${AR_THREADS:-2} nar-caption-select-decoding "$DATA" --subset val --common "--path $2 --max-len-b 30 $FEATS" \
      "${cand[@]}" --out-json "$out" > "$LOGS/$1_val_decoding.log" 2>&1 || { tail -n 15 "$LOGS/$1_val_decoding.log" >&2; exit 1; }
  fi
  python -c "import json, sys; b = json.load(open(sys.argv[1]))['best']; print(b['name'] + '=' + ' '.join(b['args']))" "$out"
}
choose_all() {  # both AR models' choices, written to $RUN/*_val_decoding.json
  choose ar "$AR" > /dev/null
  if [ "$SHALLOW" = 1 ]; then choose ar_shallow "$RUN/ar_shallow/checkpoint_best.pt" > /dev/null; fi
}

# 4. one model per paradigm, same sizes, same distilled data; two trainings at a time (one core each)
# every NAR model is validated by decoding: the CIDEr-D of its main row picks its checkpoint_best.pt
DIS="--train-subset $KD"
train nacf $NACF_FLAGS --glat-ratio "$GLAT" $NACF_POSITIONS --length-beam 3 $DIS & P1=$!
train saic $SAIC_FLAGS --group-size "$SAIC_K" $DIS & P2=$!
both $P1 $P2
train narvl $NARVL_FLAGS --glat-ratio "$GLAT" $DIS & P1=$!
train rdt $RDT_FLAGS $DIS & P2=$!
both $P1 $P2
if [ "$ROWS" = demo ] && [ "${BENCH:-1}" != 0 ]; then  # DAG on the distilled split, the decoding choice beside it
  train dag $DAG_FLAGS --glat-ratio "$GLAT" $DIS & P1=$!
  AR_THREADS=1 choose_all & P2=$!
  both $P1 $P2
elif [ "$ROWS" = demo ]; then
  train dag $DAG_FLAGS --glat-ratio "$GLAT" $DIS
else  # ... and on the raw captions (DA-Transformer's claim: it needs no distillation)
  train dag $DAG_FLAGS --glat-ratio "$GLAT" $DIS & P1=$!
  train dag_raw $DAG_FLAGS --glat-ratio "$GLAT" & P2=$!
  both $P1 $P2
fi

# 4b. SCST=1: the second training stage, self-critical sequence training (recipe.sh: SCST_FLAGS; RDT: its guided
#     variant), for the AR model and every NAR model, each from its best checkpoint, on the distilled split's
#     images (one row per image: the reward's references are the training split's human captions)
if [ "$SCST" = 1 ]; then
  FT() { echo "--finetune-from-model $RUN/$1/checkpoint_best.pt $DIS"; }
  # two lanes: the AR row's longer stage (to its plateau) and NARVL's; the other NAR rows one after another
  ( train ar_scst --arch ar_caption $SIZE $AR_SCST_FLAGS --eval-cider-args '{"beam":1,"max_len_b":30}' $(FT ar)
    train narvl_scst $NARVL_MODEL $SCST_FLAGS $(FT narvl) ) & P1=$!
  ( train nacf_scst $NACF_MODEL $NACF_POSITIONS --length-beam 3 $SCST_FLAGS $(FT nacf)
    train rdt_scst $RDT_MODEL $RDT_SCST_FLAGS --hybrid-distill-split "$KD" $(FT rdt)
    train dag_scst $DAG_MODEL $SCST_FLAGS $(FT dag)
    train saic_scst $SAIC_MODEL --group-size "$SAIC_K" $SCST_FLAGS $(FT saic) ) & P2=$!
  both $P1 $P2
fi

# 5. the AR models' decoding chosen on the val split (choose, above; skipped when made); a choice other than
#    greedy / beam 5 becomes a row of its own
if [ "${BENCH:-1}" = 0 ]; then step "trained; BENCH=0: decoding choice and benchmark skipped"; exit 0; fi
choose_all
# 6. the benchmark: every row in one interleaved run; every model's checkpoint_best.pt (by validation
#    CIDEr-D; NAR: not by a masked / noised loss over raw captions, which says little about models trained on
#    distilled captions).  Percentages are of the best AR row; BENCH=0 stops after training (time the
#    benchmark on a quiet machine).
A="--path $AR --max-len-b 30 $FEATS"
ROW=(--row "AR beam 5=$A --beam 5" --row "AR greedy=$A --beam 1"); AR_ROWS="AR beam 5,AR greedy"; VS=()
PICK=$(choose ar "$AR"); step "AR: chosen on val: ${PICK%%=*}"
case "${PICK%%=*}" in greedy|"beam 5") ;; *) ROW+=(--row "AR ${PICK%%=*} (val)=$A ${PICK#*=}"); AR_ROWS+=",AR ${PICK%%=*} (val)" ;; esac
if [ "$SHALLOW" = 1 ]; then
  H="--path $RUN/ar_shallow/checkpoint_best.pt --max-len-b 30 $FEATS"
  ROW+=(--row "AR shallow greedy=$H --beam 1"); AR_ROWS+=",AR shallow greedy"; VS=(--compare "AR shallow greedy")
  PICK=$(choose ar_shallow "$RUN/ar_shallow/checkpoint_best.pt"); step "AR shallow: chosen on val: ${PICK%%=*}"
  [ "${PICK%%=*}" = greedy ] || { ROW+=(--row "AR shallow ${PICK%%=*} (val)=$H ${PICK#*=}"); AR_ROWS+=",AR shallow ${PICK%%=*} (val)"; }
fi
N="--path $RUN/nacf/checkpoint_best.pt $FEATS --generator"
S="--path $RUN/saic/checkpoint_best.pt --max-len-b 30 $FEATS --generator outline-fill"
C="--path $RUN/narvl/checkpoint_best.pt $FEATS --generator ctc"
R="--path $RUN/rdt/checkpoint_best.pt --retrieval-file $RET $FEATS --generator diffusion --diffusion-eos-fallback"
D="--path $RUN/dag/checkpoint_best.pt $FEATS --generator dag --dag-decode"
if [ "$ROWS" = demo ]; then
  ROW+=(--row "NACF CT-MP T=2 B=3=$N ct-mp --nar-iterations 2 --length-beam 3"
        --row "SAIC k=$SAIC_K (1,1)=$S --outline-beam 1 --fill-beam 1"
        --row "NARVL CTC=$C"
        --row "RDT T=10=$R --diffusion-steps 10"
        --row "DAG lookahead=$D lookahead")
else
  ROW+=(--row "NACF MP T=1 B=1=$N mp --nar-iterations 1 --length-beam 1"
        --row "NACF CT-MP T=2 B=1=$N ct-mp --nar-iterations 2 --length-beam 1"
        --row "NACF CT-MP T=2 B=3=$N ct-mp --nar-iterations 2 --length-beam 3"
        --row "NACF CT-MP T=2 B=1 + dedup=$N ct-mp --nar-iterations 2 --length-beam 1 --dedup"
        --row "NACF CT-MP T=5 B=6 + AR teacher=$N ct-mp --nar-iterations 5 --length-beam 6 --teacher-path $AR"
        --row "SAIC k=$SAIC_K (1,1)=$S --outline-beam 1 --fill-beam 1"
        --row "SAIC k=$SAIC_K (5,1)=$S --outline-beam 5 --fill-beam 1"
        --row "NARVL CTC=$C"
        --row "NARVL CTC beam 5=$C --ctc-beam 5"
        --row "NARVL CTC + 1 refinement=$C --ctc-refine-passes 1"
        --row "RDT T=10=$R --diffusion-steps 10"
        --row "RDT T=10 + dedup=$R --diffusion-steps 10 --dedup"
        --row "RDT T=50=$R --diffusion-steps 50"
        --row "DAG greedy=$D greedy"
        --row "DAG lookahead=$D lookahead"
        --row "DAG viterbi=$D viterbi"
        --row "DAG beam 4=$D beam --dag-beam 4"
        --row "DAG (raw captions) lookahead=--path $RUN/dag_raw/checkpoint_best.pt $FEATS --generator dag --dag-decode lookahead")
fi
if [ "$SCST" = 1 ]; then  # the CIDEr-optimised rows: each named after its cross-entropy row, + SCST
  A2="--path $RUN/ar_scst/checkpoint_best.pt --max-len-b 30 $FEATS"
  ROW+=(--row "AR beam 5 + SCST=$A2 --beam 5" --row "AR greedy + SCST=$A2 --beam 1"
        --row "NACF CT-MP T=2 B=3 + SCST=--path $RUN/nacf_scst/checkpoint_best.pt $FEATS --generator ct-mp --nar-iterations 2 --length-beam 3"
        --row "SAIC k=$SAIC_K (1,1) + SCST=--path $RUN/saic_scst/checkpoint_best.pt --max-len-b 30 $FEATS --generator outline-fill --outline-beam 1 --fill-beam 1"
        --row "NARVL CTC + SCST=--path $RUN/narvl_scst/checkpoint_best.pt $FEATS --generator ctc"
        --row "RDT T=10 + SCST=--path $RUN/rdt_scst/checkpoint_best.pt --retrieval-file $RET $FEATS --generator diffusion --diffusion-eos-fallback --diffusion-steps 10"
        --row "DAG lookahead + SCST=--path $RUN/dag_scst/checkpoint_best.pt $FEATS --generator dag --dag-decode lookahead")
  AR_ROWS+=",AR beam 5 + SCST,AR greedy + SCST"
fi
step "benchmark: $(( ${#ROW[@]} / 2 )) rows, $BENCH_ITEMS items, $PASSES interleaved pass(es), $THREADS thread(s) (log: $LOGS/benchmark.log)"
SWEEP=(); [ -n "$LENGTHS" ] && SWEEP=(--length-sweep "$LENGTHS")
OMP_NUM_THREADS=$THREADS nar-caption-benchmark "$DATA" --subset test --threads "$THREADS" --max-items "$BENCH_ITEMS" \
  --passes "$PASSES" --metrics "$METRICS" --ar-rows "$AR_ROWS" "${VS[@]}" "${SWEEP[@]}" "${ROW[@]}" \
  --title "${TITLE:-arena: $DATA}" --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md" \
  --out-png "$RUN/benchmark.png" > /dev/null \
  2> >(tee "$LOGS/benchmark.log" | grep --line-buffered "^\[benchmark\]" | sed -u 's/^/     /' >&2) \
  || { sleep 1; tail -n 20 "$LOGS/benchmark.log" >&2; exit 1; }
sleep 0.5  # the console filter's last lines
step "done: $RUN/benchmark.md, $RUN/benchmark.png, $RUN/benchmark.json"
cat "$RUN/benchmark.md"
