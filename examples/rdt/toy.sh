#!/usr/bin/env bash
# RDT on the toy image benchmark, 2 CPU cores (one thread per process):
#   0. retrieval file: top-20 training sentences per image (cli/retrieve.py; own captions excluded for training images),
#   1. AR baseline (read from $AR when it exists, e.g. runs/saic_toy/ar, otherwise trained here) and the AR
#      teacher's caption of every training image ($DATA/train_distill.tsv when it exists, otherwise $RUN/train_distill.tsv),
#   2. stage 1: RDT (rdt_tiny: d 128, 1 RVE + 1 ST + 2 SD layers, λ_F 0.75, λ_E 0.55) with rdt_loss (λ 1, 1, 5),
#   3. stage 2: guided SCST (rdt_scst, CIDEr-D reward, greedy baseline, the teacher's caption among the samples),
#   4. decoding of the test split at T = 5, 10, 20, 50 (Δ = 0, deterministic) + scores and diversity (D@2, D@3, Voc-u),
#   5. batch-1 latency and throughput vs the AR baseline beam 5 (nar-caption-benchmark; rerun it on a quiet machine).
# ABLATIONS=1 adds Table V (base / +RVE / +RL) and Table VI ((λ_F, λ_E) = (1, 0), (0.75, 0), (0.75, 0.25)) rows,
# trained like stage 1 and decoded at T = 20.
# Every step is skipped when its output exists.   bash examples/rdt/toy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
source examples/lib.sh  # train, decode_score, the shared flags
DATA=${DATA:-data/toy/images}; RUN=${RUN:-runs/rdt_toy}; mkdir -p "$RUN"
AR=${AR:-runs/saic_toy/ar/checkpoint_best.pt}
EPOCHS=${RDT_EPOCHS:-15}; SCST_EPOCHS=${SCST_EPOCHS:-1}
RET="$PWD/$RUN/retrieval.json"
[ -f "$DATA/dict.txt" ] || python -m fairseq_nar_caption.cli.make_toy_data --out "$(dirname "$DATA")" > /dev/null

# 0. retrieval
[ -f "$RET" ] || python -m fairseq_nar_caption.cli.retrieve "$DATA" --splits train,val,test --k 20 --out "$RET"

TRAIN="--task captioning --generator diffusion --retrieval-file $RET $DROPOUT $TOY_FLAGS --log-interval 100 --seed 1"

# 1. AR baseline + teacher captions
if [ ! -f "$AR" ]; then
  AR="$RUN/ar/checkpoint_best.pt"
  [ -f "$AR" ] || bash examples/ar_baseline/train_toy.sh "$DATA" "$RUN/ar" > "$RUN/ar.log" 2>&1
fi
if [ -f "$DATA/train_distill.tsv" ]; then
  DISTILL=train_distill
else
  DISTILL="$PWD/$RUN/train_distill"  # absolute: the task joins it with --data
  [ -f "$DISTILL.tsv" ] || nar-caption-distill "$DATA" --path "$AR" --out-split "$DISTILL" 2> /dev/null
fi

# 2. stage 1 (Eq. 13: λ1 XE + λ2 bit + λ3 rank), cosine γ, t' ~ U(0, 0.999), self-conditioning p = 0.5
STAGE1="--arch rdt_tiny --criterion rdt_loss $OPT --lr 1e-3 --warmup-updates 300 --max-epoch $EPOCHS \
  --best-checkpoint-metric loss"
train rdt $STAGE1
if [ "${ABLATIONS:-0}" = 1 ]; then
  train rdt_base $STAGE1 --lambda-f 1 --lambda-e 0 --lambda-rank 0   # Table V: base (self-attention, no RL)
  train rdt_rve $STAGE1 --lambda-rank 0                              # Table V: + RVE
  train rdt_rl $STAGE1 --lambda-f 1 --lambda-e 0                     # Table V: + RL  (= Table VI λ_F 1, λ_E 0)
  train rdt_f75_e0 $STAGE1 --lambda-e 0                              # Table VI
  train rdt_f75_e25 $STAGE1 --lambda-e 0.25                          # Table VI
fi

# 3. stage 2: guided SCST from the best stage-1 model (the validation split's decode CIDEr-D, --eval-cider, picks the best)
train rdt_scst --arch rdt_tiny --criterion rdt_scst --num-samples 5 --hybrid-distill-split "$DISTILL" \
  --finetune-from-model "$RUN/rdt/checkpoint_best.pt" --optimizer adam --lr 5e-5 $CLIP --max-epoch $SCST_EPOCHS $SELECT

# 4. decode and score the test split: decode_score ID CHECKPOINT GENERATE-ARGS... (examples/lib.sh) ->
#    $RUN/gen_ID.txt, $RUN/score_ID.json ($LABEL: the table row), skipped when the score exists
GEN_TASK="--task captioning --generator diffusion --retrieval-file $RET"; SCORER="python -m fairseq_nar_caption.cli.score"; SCORE_QUIET=2
echo "== decode and score the test split"
# the AR model ignores the retrieved sentence
LABEL="AR beam 5" decode_score ar_b5 "$AR" --generator sequence --beam 5 --max-len-b 30
for T in 5 10 20 50; do
  LABEL="RDT stage 1, T=$T" decode_score "rdt_T$T" "$RUN/rdt/checkpoint_best.pt" --diffusion-steps $T
  LABEL="RDT stage 2 (SCST), T=$T" decode_score "scst_T$T" "$RUN/rdt_scst/checkpoint_best.pt" --diffusion-steps $T
done
if [ "${ABLATIONS:-0}" = 1 ]; then
  for name in rdt_base rdt_rve rdt_rl rdt_f75_e0 rdt_f75_e25; do
    LABEL="$name, T=20" decode_score "${name}_T20" "$RUN/$name/checkpoint_best.pt" --diffusion-steps 20
  done
fi
python -m fairseq_nar_caption.cli.table "${SCORES[@]}" --out "$RUN/scores.md"

# Table VII shape: 5 captions per image. RDT: the top-5 retrieved sentences as 5 conditions (T = 20), stage 1
# and stage 2; AR: the 5 best hypotheses of beam 5. Dist-2, Dist-3, vocabulary usage over all 5 x 250 captions
for r in 0 1 2 3 4; do
  for stage in rdt rdt_scst; do
    [ -f "$RUN/gen_div_${stage}_r$r.txt" ] || fairseq-generate "$DATA" --user-dir "$U" --task captioning --generator diffusion \
      --retrieval-file "$RET" --retrieval-test-rank $r --path "$RUN/$stage/checkpoint_best.pt" --gen-subset test \
      --batch-size 50 --cpu --diffusion-steps 20 > "$RUN/gen_div_${stage}_r$r.txt" 2> /dev/null
  done
done
[ -f "$RUN/gen_ar_nbest5.txt" ] || fairseq-generate "$DATA" --user-dir "$U" --task captioning --path "$AR" \
  --gen-subset test --beam 5 --nbest 5 --max-len-b 30 --batch-size 50 --cpu > "$RUN/gen_ar_nbest5.txt" 2> /dev/null
python - "$RUN" "$DATA" <<'PY' | tee "$RUN/diversity.md"
import sys
from fairseq_nar_caption.cli.score import dict_vocab_size
from fairseq_nar_caption.evaluation.diversity import diversity
run, data = sys.argv[1:3]
vocab = dict_vocab_size(f"{data}/dict.txt")


def hyps(paths):  # every H line: (file, sample id, rank) -> caption
    out = {}
    for path in paths:
        for line in open(path, encoding="utf-8"):
            if line.startswith("H-"):
                f = line.rstrip("\n").split("\t")
                key = (path, f[0], sum(1 for k in out if k[:2] == (path, f[0])))
                out[key] = f[2] if len(f) > 2 else ""
    return out


print("| 5 captions per image (250 test images) | D@2 | D@3 | Voc-u | Vocab |\n| --- | --- | --- | --- | --- |")
for name, paths in [("AR beam 5, 5 best hypotheses", [f"{run}/gen_ar_nbest5.txt"]),
                    ("RDT stage 1, T=20, top-5 retrieved conditions", [f"{run}/gen_div_rdt_r{r}.txt" for r in range(5)]),
                    ("RDT stage 2, T=20, top-5 retrieved conditions",
                     [f"{run}/gen_div_rdt_scst_r{r}.txt" for r in range(5)])]:
    d = diversity(hyps(paths), vocab_size=vocab)
    print(f"| {name} | {100 * d['Dist-2']:.1f} | {100 * d['Dist-3']:.1f} | {100 * d['Vocab_usage']:.1f} | "
          f"{d['Vocab_words']} |")
PY

# 5. batch-1 latency (encoder included, warm-up excluded) and throughput, CPU, one thread
echo "== benchmark"
if [ ! -f "$RUN/benchmark.md" ]; then
  R="--task captioning --generator diffusion --retrieval-file $RET --path $RUN/rdt_scst/checkpoint_best.pt"
  python -m fairseq_nar_caption.cli.benchmark "$DATA" --subset test --threads 1 --metrics Bleu,CIDEr-D \
    --row "AR beam 5=--path $AR --beam 5 --max-len-b 30" \
    --row "AR greedy=--path $AR --beam 1 --max-len-b 30" \
    --row "RDT T=5=$R --diffusion-steps 5" --row "RDT T=10=$R --diffusion-steps 10" \
    --row "RDT T=20=$R --diffusion-steps 20" --row "RDT T=50=$R --diffusion-steps 50" \
    --out-json "$RUN/benchmark.json" --out-md "$RUN/benchmark.md" 2> /dev/null | grep -v "^\[benchmark\]"
else
  cat "$RUN/benchmark.md"
fi
