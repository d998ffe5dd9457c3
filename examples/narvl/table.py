#!/usr/bin/env python
"""Collect examples/narvl/toy.sh outputs into markdown tables (Table 1 shape + ablations).

    python examples/narvl/table.py runs/narvl_toy [data/toy/vl data/toy/images/pixels] > runs/narvl_toy/tables.md

With the data folder, also the trivial baselines on the test split: the training split's
majority answer (VQA soft accuracy, entailment accuracy) and the centre box (grounding: a box
of the training boxes' mean relative size centred in each image, Acc@IoU>=0.5).

Quality: ``score_<id>.json`` (cli/score_vl.py, batch-50 fairseq-generate on the test split);
latency: ``benchmark_<task>.json`` (cli/benchmark.py, batch 1, mean over the timed items).
"""
import glob
import json
import os
import sys

MAIN = {"caption": "CIDEr-D", "vqa": "soft_accuracy", "grounding": "acc@0.5", "entailment": "accuracy"}


def baselines(data, image_dir):
    from PIL import Image

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from fairseq_nar_caption.data.ofa_tsv import parse_ofa_answers
    from fairseq_nar_caption.evaluation.vl_metrics import grounding_hits, vqa_score

    rows = lambda name: [ln.rstrip("\n").split("\t") for ln in open(os.path.join(data, name))]  # noqa: E731
    out = {}
    train = [max(parse_ofa_answers(r[3]).items(), key=lambda kv: kv[1])[0] for r in rows("vqa_train.tsv")]
    maj = max(set(train), key=train.count)
    test = rows("vqa_test.tsv")
    out["vqa"] = (f"majority answer {maj!r}", sum(vqa_score(maj, parse_ofa_answers(r[3])) for r in test) / len(test))
    train = [r[5] for r in rows("entailment_train.tsv")]
    maj = max(set(train), key=train.count)
    test = rows("entailment_test.tsv")
    out["entailment"] = (f"majority label {maj!r}", sum(r[5] == maj for r in test) / len(test))

    def size(image_id):
        with Image.open(os.path.join(image_dir, image_id + ".png")) as im:
            return im.size

    rel = []
    for r in rows("grounding_train.tsv"):
        w, h = size(r[1])
        x0, y0, x1, y1 = map(float, r[3].split(","))
        rel.append(((x1 - x0) / w, (y1 - y0) / h))
    rw, rh = sum(a for a, _ in rel) / len(rel), sum(b for _, b in rel) / len(rel)
    test = rows("grounding_test.tsv")
    preds, golds = [], []
    for r in test:
        w, h = size(r[1])
        preds.append([w * (1 - rw) / 2, h * (1 - rh) / 2, w * (1 + rw) / 2, h * (1 + rh) / 2])
        golds.append(list(map(float, r[3].split(","))))
    hits = grounding_hits(preds, golds)
    out["grounding"] = ("centre box of mean size", sum(hits) / len(hits))
    return out


def main(run, data=None, image_dir=None):
    scores = {}
    for path in glob.glob(os.path.join(run, "score_*.json")):
        r = json.load(open(path))
        scores[r["name"]] = r
    bench = {}
    for path in glob.glob(os.path.join(run, "benchmark_*.json")):
        task = os.path.basename(path)[len("benchmark_"):-len(".json")]
        bench[task] = {r["name"]: r for r in json.load(open(path))["rows"]}
    print("| task | metric | AR beam 5 | AR greedy | NARVL (CTC) | NARVL + KD | AR b5 ms | AR greedy ms | NARVL ms "
          "| speed-up vs AR b5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task, metric in MAIN.items():
        def q(name):
            r = scores.get(name)
            return f"{100 * r['scores'][metric]:.1f}" if r and metric in r["scores"] else "-"

        b = bench.get(task, {})

        def ms(name):
            return f"{b[name]['latency']['mean_ms']:.1f}" if name in b else "-"

        sp = f"{b['NARVL ctc']['speedup']:.2f}x" if "NARVL ctc" in b else "-"
        print(f"| {task} | {metric} | {q(f'ar_{task}_b5')} | {q(f'ar_{task}_b1')} | {q(f'nar_{task}')} | "
              f"{q(f'nar_{task}_kd')} | {ms('AR beam 5')} | {ms('AR greedy')} | {ms('NARVL ctc')} | {sp} |")
    if data:
        print("\n| task | trivial baseline | test score |\n|---|---|---|")
        for task, (name, v) in baselines(data, image_dir).items():
            print(f"| {task} | {name} | {100 * v:.1f} |")
    abl = sorted(n for n in scores if "_abl_" in n or n.startswith("nar_caption_"))
    if abl:
        print("\n| ablation row | task | score |\n|---|---|---|")
        refs = sorted({f"nar_{scores[n]['task']}" for n in abl} | {f"nar_{scores[n]['task']}_kd" for n in abl})
        for n in dict.fromkeys([r for r in refs if r in scores] + abl):
            t = scores[n]["task"]
            print(f"| {n} | {t} | {MAIN[t]} {100 * scores[n]['scores'][MAIN[t]]:.1f} |")

if __name__ == "__main__":
    main(*sys.argv[1:4])
