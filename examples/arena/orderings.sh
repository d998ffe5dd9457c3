#!/usr/bin/env bash
# The papers' orderings with seeds: each claim of the papers as arms that differ in one thing, every
# arm trained once per seed on one arena's teacher, distillation and retrieval file, then one
# benchmark run over every (arm, seed) and examples/arena/orderings.py's table (mean ± spread per
# arm, paired differences per seed, holds / does not hold).
#
#   make demo && bash examples/arena/orderings.sh            (demo scale: d 128, 1 + 2 layers, 300
#                                                             updates, 3 seeds; ≈ 80 min on 2 cores)
#   RUN=runs/arena_images UPD=600 SIZE="--embed-dim 256 --ffn-embed-dim 1024 --attention-heads 4 \
#     --encoder-layers 2 --decoder-layers 2" bash examples/arena/orderings.sh   (the full recipe's scale)
#
# Arms (every one selected by validation CIDEr-D, --eval-cider, as in the arena):
#   claim "KD helps every NAR paradigm" (NARVL Table 9, SAIC Table 5): <paradigm>_kd vs <paradigm>_raw,
#     the arena recipe on the distilled split vs on the raw captions, same updates;
#   "Q-CTC >> position-wise CE" (NARVL Table 8): narvl_ctc (the paper's Q-CTC, no glancing) vs narvl_ce
#     (--loss ce, decoded with --ctc-no-merge);
#   "CT- >= plain decoding" (NACF Table 4): the nacf_kd models decoded with ct-mp and with mp (T = 2, B = 1);
#   "--dedup helps" (the NAT field's post-processing, not in the papers): nacf_kd and rdt_kd decoded with and
#     without --dedup;
#   "k = 2 >= k = 4" (SAIC Table 6): saic2_kd vs saic4_kd;
#   "RVE and RL each help" (RDT Table V): rdt_base (λ_F 1, λ_E 0: ordinary attention; λ3 0), rdt_rl
#     (+ ranking loss λ3 5), rdt_rve (+ ranking attention λ_F 0.75, λ_E 0.55; λ3 0), rdt_kd (both);
#   DAG: dag_kd vs narvl_kd (the graph against CTC, both with glancing), dag_kd vs dag_raw (does DAG need
#     distillation?), dag_kd decoded by viterbi vs lookahead.
# ARMS="narvl_ctc narvl_ce" restricts the arms; SEEDS="1 2 3" the seeds.  Trainings run two at a time,
# one thread each; finished ones are skipped.  Outputs: $OUT/{benchmark,orderings}.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1
source examples/lib.sh  # train, step, the shared flags
DATA=${DATA:-data/toy/images}; RUN=${RUN:-runs/demo}; FEATS=${FEATS:-}; OUT=${OUT:-$RUN/orderings}
SIZE=${SIZE:---embed-dim 128 --ffn-embed-dim 512 --attention-heads 4 --encoder-layers 1 --decoder-layers 2}
UPD=${UPD:-300}; SEEDS=${SEEDS:-1 2 3}; GLAT=${GLAT:-0.5}; ITEMS=${ITEMS:-250}
ALL="nacf_kd nacf_raw saic2_kd saic2_raw saic4_kd narvl_kd narvl_raw narvl_ctc narvl_ce rdt_kd rdt_raw rdt_base rdt_rl rdt_rve
  dag_kd dag_raw"
ARMS=${ARMS:-$ALL}
AR=$RUN/ar/checkpoint_best.pt; KD=train_distill_$(basename "$RUN"); RET="$(cd "$RUN" && pwd)/retrieval.json"
[ -f "$AR" ] && [ -f "$DATA/$KD.tsv" ] && [ -f "$RET" ] \
  || { echo "orderings.sh: $RUN has no teacher / distillation / retrieval file: run make demo (or examples/arena/full.sh) first" >&2; exit 1; }
mkdir -p "$OUT/logs"

NAR_UPDATES=$UPD; RDT_UPDATES=$(( UPD * 3 / 2 ))
unset NAR_EPOCHS  # the fixed update budget above, even with NAR_EPOCHS exported by the caller
source examples/arena/recipe.sh  # COMMON NAR_OPT and each paradigm's flags
NACF="$NACF_FLAGS --glat-ratio $GLAT --scale-positions --length-beam 1"
# the raw split has several captions per item (toy images: 157 updates an epoch against the distilled split's
# 32): validate and keep the best checkpoint once per distilled epoch, so every arm is selected among as many
# validations
EVERY=$(( ($(wc -l < "$DATA/$KD.tsv") - 1 + 63) / 64 ))
RAW="--train-subset train --validate-interval-updates $EVERY --save-interval-updates $EVERY --keep-interval-updates 1"
DIS="--train-subset $KD"
declare -A ARM=(  # each arm's training flags
  [nacf_kd]="$NACF $DIS" [nacf_raw]="$NACF $RAW"
  [saic2_kd]="$SAIC_FLAGS --group-size 2 $DIS" [saic2_raw]="$SAIC_FLAGS --group-size 2 $RAW"
  [saic4_kd]="$SAIC_FLAGS --group-size 4 $DIS"
  [narvl_kd]="$NARVL_FLAGS --glat-ratio $GLAT $DIS" [narvl_raw]="$NARVL_FLAGS --glat-ratio $GLAT $RAW"
  [narvl_ctc]="$NARVL_FLAGS $DIS" [narvl_ce]="$NARVL_FLAGS --loss ce --ctc-no-merge $DIS"
  [rdt_kd]="$RDT_FLAGS $DIS" [rdt_raw]="$RDT_FLAGS $RAW"
  [rdt_base]="$RDT_FLAGS --lambda-f 1 --lambda-e 0 --lambda-rank 0 $DIS"
  [rdt_rl]="$RDT_FLAGS --lambda-f 1 --lambda-e 0 $DIS" [rdt_rve]="$RDT_FLAGS --lambda-rank 0 $DIS"
  [dag_kd]="$DAG_FLAGS --glat-ratio $GLAT $DIS" [dag_raw]="$DAG_FLAGS --glat-ratio $GLAT $RAW")
# benchmark rows of an arm: "label|decoding args" (the checkpoint is added)
rows() {
  case $1 in
    nacf_*) echo "CT-MP T=2 B=1|--generator ct-mp --nar-iterations 2 --length-beam 1"
            [ "$1" = nacf_kd ] && echo "MP T=2 B=1|--generator mp --nar-iterations 2 --length-beam 1" \
              && echo "CT-MP T=2 B=1 dedup|--generator ct-mp --nar-iterations 2 --length-beam 1 --dedup" ;;
    saic*) echo "(1,1)|--max-len-b 30 --generator outline-fill --outline-beam 1 --fill-beam 1" ;;
    narvl_ce) echo "CTC|--generator ctc --ctc-no-merge" ;;
    narvl_*) echo "CTC|--generator ctc" ;;
    dag_*) echo "lookahead|--generator dag --dag-decode lookahead"
           [ "$1" = dag_kd ] && echo "viterbi|--generator dag --dag-decode viterbi" ;;
    rdt_*) echo "T=10|--retrieval-file $RET --generator diffusion --diffusion-steps 10 --diffusion-eos-fallback"
           [ "$1" = rdt_kd ] && echo "T=10 dedup|--retrieval-file $RET --generator diffusion --diffusion-steps 10 \
--diffusion-eos-fallback --dedup" ;;
  esac
}
for a in $ARMS; do [ -n "${ARM[$a]:-}" ] || { echo "orderings.sh: unknown arm $a (arms: $ALL)" >&2; exit 1; }; done

SECONDS=0; CLOCK=1
# train ARM_sSEED ARGS... (examples/lib.sh): into $OUT/ARM_sSEED, log in $OUT/logs/ARM_sSEED.log, unless finished
TRAIN=$COMMON; TRAIN_DIR=$OUT; TRAIN_LOGS=$OUT/logs; VALID_LINES=1
# seed-major, so a stopped run still holds whole seeds; two trainings at a time
failed=0
for s in $SEEDS; do
  for a in $ARMS; do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || failed=1; done
    train "${a}_s$s" ${ARM[$a]} --seed "$s" &
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
[ $failed = 0 ] || { echo "orderings.sh: a training failed (see above)" >&2; exit 1; }

ROW=(--row "AR beam 5=--path $AR --max-len-b 30 $FEATS --beam 5")
for a in $ARMS; do
  while IFS= read -r r; do
    for s in $SEEDS; do ROW+=(--row "$a ${r%%|*} / seed $s=--path $OUT/${a}_s$s/checkpoint_best.pt $FEATS ${r#*|}"); done
  done < <(rows "$a")
done
step "benchmark: $(( ${#ROW[@]} / 2 )) rows, $ITEMS test items (quality; one pass)"
OMP_NUM_THREADS=2 nar-caption-benchmark "$DATA" --subset test --threads 2 --max-items "$ITEMS" --passes 1 --warmup 0 \
  --throughput-batch 0 --metrics Bleu,CIDEr-D "${ROW[@]}" --title "orderings" \
  --out-json "$OUT/benchmark.json" --out-md "$OUT/benchmark.md" > /dev/null 2> "$OUT/logs/benchmark.log" \
  || { tail -n 20 "$OUT/logs/benchmark.log" >&2; exit 1; }
python examples/arena/orderings.py "$OUT/benchmark.json" --out-md "$OUT/orderings.md" --out-json "$OUT/orderings.json"
step "done: $OUT/orderings.md"
