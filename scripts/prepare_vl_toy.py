#!/usr/bin/env python
"""Toy benchmark → a vision-language data folder for the ``vision_language`` task.

    python scripts/prepare_vl_toy.py [--images data/toy/images] [--out data/toy/vl]
        [--vocab-size 400] [--num-bins 64]

Writes, in OFA's TSV columns (``data/vl_dataset.py``), with the image column holding the
toy image id (decode with ``--image-dir ../images/pixels``, relative to the output folder):

- ``caption_train.tsv`` (one row per caption, uniq id ``<image>_<k>``),
  ``caption_{val,test}.tsv`` (one row per image, references joined by ``&&``, in the
  order of ``<split>_refs.json``), ``caption_{val,test}_refs.json`` (copies of the
  COCO-format references);
- ``vqa_*.tsv``, ``grounding_*.tsv``, ``entailment_*.tsv`` from the toy items (all rows,
  file order kept);
- ``spm.model``/``spm.vocab``: a sentencepiece model (BPE by default) trained on the training
  texts and OFA's prompts;
- ``dict.txt``: the sentencepiece pieces, then ``<bin_0> … <bin_{N-1}>``, then
  ``<mask> <vis> <blank>`` (the task appends any missing, in this order);
- ``prep.json``: the arguments (``--num-bins`` must be given to the task as well).

Every output is written to a temporary name and renamed; a bad input row stops with
the file and line.
"""
import argparse
import csv
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fairseq_nar_caption.errors import DataError  # noqa: E402
from fairseq_nar_caption.data.vl_dataset import prompt_for  # noqa: E402
from fairseq_nar_caption.data.text import RESERVED_SYMBOLS  # noqa: E402
from fairseq_nar_caption.files import atomic_write_text  # noqa: E402

SPLITS = ("train", "val", "test")


def read_tsv(path):
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found (make the toy data with nar-caption-toy-data)")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    for i, r in enumerate(body, 2):
        if len(r) != len(header):
            raise DataError(f"{path}:{i}: {len(r)} columns, header has {len(header)}")
    return [dict(zip(header, r)) for r in body]


def tsv_text(rows):
    for r in rows:
        for c in r:
            if "\t" in c or "\n" in c:
                raise DataError(f"field {c!r} holds a tab or newline")
    return "".join("\t".join(r) + "\n" for r in rows)


def build(images: str, out: str, vocab_size: int, num_bins: int, model_type: str = "bpe") -> None:
    import sentencepiece as spm

    os.makedirs(out, exist_ok=True)
    texts = []
    files = {}
    for split in SPLITS:
        caps = read_tsv(os.path.join(images, f"{split}.tsv"))
        if split == "train":
            count = {}
            rows = []
            for r in caps:
                k = count.get(r["item_id"], 0)
                count[r["item_id"]] = k + 1
                rows.append([f"{r['item_id']}_{k}", r["item_id"], r["caption"], "", r["item_id"]])
                texts.append(r["caption"])
        else:
            refs_path = os.path.join(images, f"{split}_refs.json")
            with open(refs_path) as f:
                refs = json.load(f)
            by_id = {}
            for a in refs["annotations"]:
                by_id.setdefault(str(a["image_id"]), []).append(a["caption"])
            rows = []
            for img in refs["images"]:
                i = str(img["id"])
                if i not in by_id:
                    raise DataError(f"{refs_path}: image {i} has no caption")
                rows.append([i, i, "&&".join(by_id[i]), "", i])
            shutil.copyfile(refs_path, os.path.join(out, f"caption_{split}_refs.json"))
        files[f"caption_{split}.tsv"] = rows
        vqa = read_tsv(os.path.join(images, f"vqa_{split}.tsv"))
        files[f"vqa_{split}.tsv"] = [[r["uniq_id"], r["image_id"], r["question"], r["answers"], "", r["image_id"]]
                                     for r in vqa]
        gr = read_tsv(os.path.join(images, f"grounding_{split}.tsv"))
        files[f"grounding_{split}.tsv"] = [[r["uniq_id"], r["image_id"], r["text"], r["box"], r["image_id"]]
                                           for r in gr]
        ent = read_tsv(os.path.join(images, f"entailment_{split}.tsv"))
        files[f"entailment_{split}.tsv"] = [[r["uniq_id"], r["image_id"], r["image_id"], r["hypothesis"], "",
                                             r["label"]] for r in ent]
        if split == "train":
            for r in vqa:
                texts.append(r["question"])
                texts.extend(p.split("|!+", 1)[1] for p in r["answers"].split("&&"))
            texts.extend(r["text"] for r in gr)
            texts.extend(r["hypothesis"] for r in ent)
    texts += [prompt_for(t, "x") for t in ("caption", "grounding", "entailment")] * 50
    texts += ["yes no maybe entailment contradiction neutral"] * 50
    texts = [t.strip().lower() for t in texts]

    tmp = tempfile.mkdtemp(dir=out, prefix=".tmp-spm-")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=os.path.join(tmp, "spm"), vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
            minloglevel=2, bos_id=-1, eos_id=-1, unk_id=0)
        for ext in ("model", "vocab"):
            os.replace(os.path.join(tmp, f"spm.{ext}"), os.path.join(out, f"spm.{ext}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "spm.model"))
    counts = {}
    for t in texts:
        for p in sp.encode(t, out_type=str):
            counts[p] = counts.get(p, 0) + 1
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
    lines = [f"{p} {counts.get(p, 0)}" for p in pieces]
    lines += [f"<bin_{i}> 0" for i in range(num_bins)] + [f"{s} 0" for s in RESERVED_SYMBOLS]
    atomic_write_text(os.path.join(out, "dict.txt"), "\n".join(lines) + "\n")
    for name, rows in files.items():
        atomic_write_text(os.path.join(out, name), tsv_text(rows))
    atomic_write_text(os.path.join(out, "prep.json"), json.dumps(
        {"images": os.path.abspath(images), "vocab_size": vocab_size, "num_bins": num_bins,
         "image_dir": os.path.relpath(os.path.join(images, "pixels"), out)}, indent=1) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="data/toy/images")
    p.add_argument("--out", default="data/toy/vl")
    p.add_argument("--vocab-size", type=int, default=400)
    p.add_argument("--num-bins", type=int, default=64)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"], help="sentencepiece model type")
    a = p.parse_args(argv)
    build(a.images, a.out, a.vocab_size, a.num_bins, a.model_type)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
