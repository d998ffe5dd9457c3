# The arena's training flags: one home for arena.sh, ablations.sh and orderings.sh (sourced, not run).
# Source examples/lib.sh first (OPT: the optimiser and schedule of every training; SELECT: checkpoint selection
# by the validation decode score, --eval-cider, of the model's generator; DROPOUT, TOY_FLAGS).
# Set before sourcing: SIZE (model size flags), FEATS (task feature flags, may be empty), AR (the teacher's
# checkpoint), RET (RDT's retrieval file), NAR_UPDATES, RDT_UPDATES, optionally NAR_EPOCHS, NAR_PATIENCE.  Defines:
#   COMMON  task, data loading, logging flags of every training (no seed, no training split)
#   NAR_OPT the NAR models' learning rate, budget and selection
#   NACF_FLAGS SAIC_FLAGS NARVL_FLAGS RDT_FLAGS DAG_FLAGS
#           each paradigm's model, criterion and validation decoding at the papers' training; the
#           scripts add the arena's levers (--glat-ratio, --scale-positions), --group-size, the split
#   NACF_MODEL SAIC_MODEL NARVL_MODEL RDT_MODEL DAG_MODEL  the model and validation flags alone
#   SCST_FLAGS RDT_SCST_FLAGS AR_SCST_FLAGS  the self-critical stage (SCST_LR, SCST_UPDATES, AR_SCST_EPOCHS,
#           SCST_SAMPLES, SCST_BASELINE)
COMMON="--task captioning $FEATS $DROPOUT $TOY_FLAGS --log-interval 50"
# The NAR rows' first-stage budget: NAR_UPDATES updates (RDT: RDT_UPDATES); with NAR_EPOCHS set, like the AR row:
# to its validation plateau, stopped after NAR_PATIENCE (3) validations without a better CIDEr-D, at most NAR_EPOCHS
# passes over the distilled split (SAIC's curriculum still spans NAR_UPDATES updates, its last stage after them)
if [ -n "${NAR_EPOCHS:-}" ]; then
  NAR_BUDGET="--max-epoch $NAR_EPOCHS --patience ${NAR_PATIENCE:-3}"; RDT_BUDGET=$NAR_BUDGET
else
  NAR_BUDGET="--max-update $NAR_UPDATES"; RDT_BUDGET="--max-update $RDT_UPDATES"
fi
NAR_OPT="$OPT --lr 5e-4 --warmup-updates 100 $NAR_BUDGET $SELECT"
# Each paradigm: X_MODEL (architecture, size, model options and the generator that validates it: what a
# second training stage from its checkpoint, e.g. SCST, needs again) and X_FLAGS (the whole first stage).
# NACF: masked LM + visual words + length predictor from the AR weights; validated by CT-MP T = 2
NACF_MODEL="--arch nacf --encoder-type transformer $SIZE --generator ct-mp --nar-iterations 2"
NACF_FLAGS="$NACF_MODEL --init-from-ar $AR --criterion nacf_loss --mask-ratio-low 0.35 --mask-ratio-high 0.9 $NAR_OPT"
# SAIC: group mask + curriculum over the whole budget, from the AR weights; validated by outline-fill (1,1)
# (the JSON has no space: the flags are split on whitespace)
SAIC_MODEL="--arch saic $SIZE --generator outline-fill --outline-beam 1 --fill-beam 1 --eval-cider-args {\"max_len_b\":30}"
SAIC_FLAGS="$SAIC_MODEL --init-from-ar $AR --criterion group_mask --curriculum-updates $NAR_UPDATES --p-hybr 1 $NAR_OPT"
# NARVL over features: 40 learnable queries + Query-CTC, from the AR weights; validated by CTC decoding
NARVL_MODEL="--arch narvl_features $SIZE --num-queries 40 --generator ctc"
NARVL_FLAGS="$NARVL_MODEL --init-from-ar $AR --criterion query_ctc --label-smoothing 0.1 $NAR_OPT"
# RDT: its decoder depth = Semantic Transformer + Sentence Decoder blocks (default 1 + 1 = the AR decoder's 2);
# cheaper updates, so RDT_UPDATES of them; validated at T = 10.  Its retrieved-sentence condition
# (examples/rdt/README.md, "Making the retrieved sentence matter"): RDT_CONDITION=copy (default) reads the sentence
# with the output words' embeddings and, slot by slot, as bits beside x_t, trains with half of its conditions a
# human caption of the image and starts from the AR weights; RDT_CONDITION=paper: the paper's path alone (its own
# embedding table, the Semantic Transformer's attention), retrieved sentences only, from scratch
RDT_SIZE=$(echo "$SIZE" | sed -E "s/--decoder-layers ([0-9]+)/${RDT_SIZE_LAYERS:---decoder-layers 1 --semantic-layers 1}/")
case ${RDT_CONDITION:-copy} in
  copy) RDT_CONDITION_MODEL="--retrieval-embed tied --retrieval-slots"
        RDT_CONDITION_TRAIN="--init-from-ar $AR --retrieval-gt-prob 0.5" ;;
  paper) RDT_CONDITION_MODEL=""; RDT_CONDITION_TRAIN="" ;;
  *) echo "recipe.sh: RDT_CONDITION must be copy or paper, got '$RDT_CONDITION'" >&2; exit 2 ;;
esac
# RDT_SEQ_LEN: its fixed caption slots, which must hold the longest training target + </s> (the toy's distilled
# captions stay under 24 tokens; real language needs the distillation's cap, 28 words, + 1: coco_concepts.sh sets 32)
RDT_MODEL="--arch rdt $RDT_SIZE --seq-len ${RDT_SEQ_LEN:-24} $RDT_CONDITION_MODEL --retrieval-file $RET
  --generator diffusion --diffusion-steps 10 --diffusion-eos-fallback"
RDT_FLAGS="$RDT_MODEL $RDT_CONDITION_TRAIN --criterion rdt_loss $OPT --lr 1e-3 --warmup-updates 200
  $RDT_BUDGET $SELECT"
# DAG (DA-Transformer for captions): L = 2 x 32 graph vertices, from the AR weights; validated by lookahead
DAG_MODEL="--arch dag_caption $SIZE --graph-ratio 2 --generator dag --dag-decode lookahead"
DAG_FLAGS="$DAG_MODEL --init-from-ar $AR --criterion dag_loss $NAR_OPT"
# SCST (self-critical sequence training, the second stage of any row): from a first-stage checkpoint,
# K = SCST_SAMPLES sampled captions per image, the mean-of-samples baseline, CIDEr-D against the training
# split's references, at the constant rate SCST_LR; the NAR rows SCST_UPDATES updates (RDT: its guided
# variant, rdt_scst); the AR row, like its first stage, to its validation plateau: stopped after AR_PATIENCE
# validations without a better CIDEr-D, at most AR_SCST_EPOCHS passes over the training images (the AR
# model's CIDEr-D still rises long after the NAR rows' budget: docs/results.md, "The AR row's SCST to its plateau")
SCST_OPT="$ADAM $CLIP --lr ${SCST_LR:-5e-5} $SELECT --num-samples ${SCST_SAMPLES:-5}"
SELF_CRITICAL="--criterion scst --scst-baseline ${SCST_BASELINE:-mean}"  # (rdt_scst: its default, Eq. 14's greedy)
NAR_SCST_BUDGET="--max-update ${SCST_UPDATES:-$NAR_UPDATES}"
SCST_FLAGS="$SELF_CRITICAL $SCST_OPT $NAR_SCST_BUDGET"
RDT_SCST_FLAGS="--criterion rdt_scst $SCST_OPT $NAR_SCST_BUDGET"
AR_SCST_FLAGS="$SELF_CRITICAL $SCST_OPT --max-epoch ${AR_SCST_EPOCHS:-12} --patience ${AR_PATIENCE:-3}"
