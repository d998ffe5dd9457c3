"""Why a paradigm falls short of its AR teacher: the measurements issue #12 asks for, on one arena run.

    python examples/arena/diagnose.py runs/arena_images [--data data/toy/images] [--out diag.json]
    python examples/arena/diagnose.py runs/demo_videos --data data/toy/videos \
        --feature-files appearance.h5,motion.h5 --items 100

Prints (and writes as JSON with ``--out``):

- distilled-data quality: the teacher's own CIDEr-D / BLEU-4 on the training split (its distilled
  captions scored against the raw training references), its caption lengths;
- CTC feasibility: NARVL's N queries against the distilled targets (tokens + blanks between
  repeats, the positions an alignment needs): the query-to-target ratio, the largest need;
- NACF's length predictor: on the distilled training split, how often the predicted length
  (argmax) is the teacher caption's; on the test split, how often it is the length of one of the
  references, and its mean distance to the closest reference length;
- SAIC: teacher-forced accuracy of the Outliner's heads and of the Filler per slot of a group;
- RDT's retrieved sentence alone: the top-1 sentence of the run's retrieval file as the caption of
  every test item (the yardstick of RDT's "+20 CIDEr-D above its retrieved sentence" goal);
- learning curves: validation loss and (``--eval-cider``) CIDEr-D per epoch of every model, from the
  run's training logs, with the epoch of the best CIDEr-D — is it still improving at the end?

Every figure comes from the run's files; nothing is trained.
"""
import argparse
import json
import os
import re
import sys

import torch


def teacher_quality(data: str, kd_split: str) -> dict:
    from fairseq_nar_caption.data.manifest import item_references, read_manifest
    from fairseq_nar_caption.evaluation.coco_metrics import coco_scores

    refs = item_references(os.path.join(data, "train.tsv"))
    kd = {r.item_id: r.caption for r in read_manifest(os.path.join(data, f"{kd_split}.tsv"))}
    s = coco_scores({k: refs[k] for k in kd}, kd, spice="off", metrics=("Bleu", "CIDEr-D"))
    lengths = [len(c.split()) for c in kd.values()]
    ref_lengths = [len(c.split()) for k in kd for c in refs[k]]
    return {"split": kd_split, "items": len(kd), "CIDEr-D": round(100 * s["CIDEr-D"], 1),
            "Bleu_4": round(100 * s["Bleu_4"], 1), "mean_words": round(sum(lengths) / len(lengths), 2),
            "mean_reference_words": round(sum(ref_lengths) / len(ref_lengths), 2)}


def ctc_feasibility(data: str, kd_split: str, num_queries: int) -> dict:
    from fairseq_nar_caption.data.manifest import read_manifest

    need = []
    for r in read_manifest(os.path.join(data, f"{kd_split}.tsv")):
        w = r.caption.split()
        need.append(len(w) + sum(1 for a, b in zip(w, w[1:]) if a == b))
    mean = sum(need) / len(need)
    return {"num_queries": num_queries, "mean_positions_needed": round(mean, 2), "max_positions_needed": max(need),
            "query_to_target_ratio": round(num_queries / mean, 2), "infeasible": sum(n > num_queries for n in need)}


@torch.no_grad()
def nacf_lengths(data: str, ckpt: str, kd_split: str, max_items: int = 500, extra=()) -> dict:
    from fairseq_nar_caption import inference

    loaded = inference.load(data, ["--path", ckpt, "--generator", "mp", "--nar-iterations", "1", "--length-beam", "1", *extra])
    model, task = loaded.models[0], loaded.task
    out = {}
    for split in (kd_split, "test"):
        task.load_dataset(split, per="item" if split == "test" else "caption")
        ds = task.datasets[split]
        hit = near = total = 0
        dist = 0.0
        for sample in inference.batches(ds, 64, max_items):
            enc = model.forward_encoder(sample["net_input"])
            pred = model.forward_length(enc).argmax(-1).tolist()
            for p, refs, tgt in zip(pred, sample["references"], sample["target"]):
                if split == "test":
                    lens = [len(r.split()) for r in refs]
                else:  # what it was trained to predict: the teacher caption's word count
                    lens = [int(tgt.ne(task.dictionary.pad()).sum()) - 1]
                d = min(abs(p - n) for n in lens)
                hit += d == 0
                near += d <= 1
                dist += d
                total += 1
        out[split] = {"items": total, "exact": round(hit / total, 3), "within_1": round(near / total, 3),
                      "mean_abs_error": round(dist / total, 2)}
    return out


@torch.no_grad()
def saic_accuracy(data: str, ckpt: str, kd_split: str, max_items: int = 500, extra=()) -> dict:
    """Teacher-forced accuracy of SAIC's Outliner (group heads) and Filler (slot j = 1..k-1 of
    every group): on the distilled training split (what it learned) and against each test item's
    first reference."""
    return {split: _saic_accuracy(data, ckpt, split, max_items, extra) for split in (kd_split, "test")}


def _saic_accuracy(data: str, ckpt: str, split: str, max_items: int, extra=()) -> dict:
    from fairseq_nar_caption import inference
    from fairseq_nar_caption.models.saic import filler_layout, filler_targets, outline_layout

    loaded = inference.load(data, ["--path", ckpt, "--generator", "outline-fill", *extra])
    model, task = loaded.models[0], loaded.task
    d = task.dictionary
    task.load_dataset(split)
    k = model.group_size
    heads_ok = heads_n = 0
    slot_ok, slot_n = [0] * k, [0] * k
    for sample in inference.batches(task.datasets[split], 64, max_items):
        enc = model.forward_encoder(sample["net_input"])
        target = sample["target"]
        prev, heads = outline_layout(target, k, d.eos(), d.pad())
        pred = model.forward_outliner(prev, enc).argmax(-1)
        keep = heads.ne(d.pad())
        heads_ok += int((pred.eq(heads) & keep).sum())
        heads_n += int(keep.sum())
        filler_in = filler_layout(heads, k, model.mask_idx, d.pad())
        tgt = filler_targets(target, filler_in, k, d.eos(), d.pad())
        fill = model.forward_filler(filler_in, enc).argmax(-1)
        pos = torch.arange(tgt.size(1)).remainder(k)
        for j in range(1, k):
            sel = tgt.ne(d.pad()) & pos.eq(j)[None, :]
            slot_ok[j] += int((fill.eq(tgt) & sel).sum())
            slot_n[j] += int(sel.sum())
    return {"items": min(max_items, len(task.datasets[split])), "group_size": k, "outliner_head_accuracy": round(heads_ok / max(heads_n, 1), 3),
            "filler_accuracy_by_slot": {j: round(slot_ok[j] / max(slot_n[j], 1), 3) for j in range(1, k)}}


VALID = re.compile(r"epoch (\d+) \| valid on '\w+' subset \| loss ([\d.]+)(?:.*?\| cider ([\d.]+))?.*?num_updates (\d+)")


def retrieved_alone(data: str, retrieval: str, split: str = "test", max_items=None) -> dict:
    """RDT's condition as a caption: the top-1 retrieved sentence of every item of the split (its first
    ``max_items``, the benchmark's ``--max-items``), scored against the split's references (goals.py's
    --retrieved-cider)."""
    from fairseq_nar_caption.data.manifest import item_references
    from fairseq_nar_caption.data.retrieval import load_retrieval_file
    from fairseq_nar_caption.evaluation.coco_metrics import coco_scores

    refs = item_references(os.path.join(data, f"{split}.tsv"))
    if max_items:
        refs = dict(list(refs.items())[:max_items])
    top = load_retrieval_file(retrieval)
    missing = [k for k in refs if not top.get(k)]
    if missing:
        raise SystemExit(f"{retrieval}: no retrieved sentence for {split} item {missing[0]} ({len(missing)} missing)")
    s = coco_scores(refs, {k: top[k][0] for k in refs}, spice="off", metrics=("Bleu", "CIDEr-D"))
    return {"split": split, "items": len(refs), "CIDEr-D": round(100 * s["CIDEr-D"], 1),
            "Bleu_4": round(100 * s["Bleu_4"], 1)}


def learning_curves(logs: str) -> dict:
    curves = {}
    for name in sorted(os.listdir(logs)):
        if not name.endswith(".log"):
            continue
        rows = [(int(e), float(loss), float(c) if c else None, int(u))
                for e, loss, c, u in VALID.findall(open(os.path.join(logs, name), errors="replace").read())]
        if not rows:
            continue
        entry = {"epochs": len(rows), "updates": rows[-1][3], "loss": [r[1] for r in rows]}
        ciders = [r[2] for r in rows]
        if any(c is not None for c in ciders):
            best = max(range(len(rows)), key=lambda i: ciders[i] if ciders[i] is not None else -1)
            entry.update({"cider": ciders, "best_epoch": rows[best][0], "best_cider": ciders[best],
                          "last_cider": ciders[-1]})
        curves[name[:-4]] = entry
    return curves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an arena run folder (examples/arena/arena.sh's RUN)")
    p.add_argument("--data", default="data/toy/images")
    p.add_argument("--kd-split", default=None, help="default: train_distill_<run name>")
    p.add_argument("--num-queries", type=int, default=40)
    p.add_argument("--nacf", default=None, help="NACF checkpoint (default: RUN/nacf/checkpoint_best.pt)")
    p.add_argument("--logs", default=None, help="training logs folder (default: RUN/logs)")
    p.add_argument("--feature-files", default=None, help="the task's --feature-files (e.g. appearance.h5,motion.h5)")
    p.add_argument("--items", type=int, default=None,
                   help="first N test items for the retrieved-sentence score (the benchmark's --max-items)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    kd = a.kd_split or f"train_distill_{os.path.basename(os.path.normpath(a.run))}"
    report = {"teacher": teacher_quality(a.data, kd), "ctc": ctc_feasibility(a.data, kd, a.num_queries)}
    extra = ["--feature-files", a.feature_files] if a.feature_files else []
    nacf = a.nacf or os.path.join(a.run, "nacf", "checkpoint_best.pt")
    if os.path.isfile(nacf):
        report["nacf_length"] = nacf_lengths(a.data, nacf, kd, extra=extra)
    saic = os.path.join(a.run, "saic", "checkpoint_best.pt")
    if os.path.isfile(saic):
        report["saic_teacher_forced"] = saic_accuracy(a.data, saic, kd, extra=extra)
    retrieval = os.path.join(a.run, "retrieval.json")
    if os.path.isfile(retrieval):
        report["retrieved_alone"] = retrieved_alone(a.data, retrieval, max_items=a.items)
    report["curves"] = learning_curves(a.logs or os.path.join(a.run, "logs"))
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
