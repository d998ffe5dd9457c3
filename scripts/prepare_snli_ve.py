#!/usr/bin/env python
"""SNLI-VE -> OFA entailment TSVs for the NARVL ``entailment`` task.

Usage::

    python scripts/prepare_snli_ve.py --data-dir SNLI-VE/data \\
        --image-dir flickr30k_images --out data/vl/snli_ve [--splits train dev test]

Inputs: SNLI-VE's ``snli_ve_<split>.jsonl`` files in ``--data-dir`` (one JSON object
per line with ``Flickr30K_ID``, ``sentence1`` (the premise: a Flickr30k caption),
``sentence2`` (the hypothesis), ``gold_label``, ``pairID``) and the Flickr30k
images ``<image-dir>/<Flickr30K_ID>.jpg``.

Outputs: ``entailment_<split>.tsv`` (the names the ``vision_language`` task reads;
SNLI-VE's ``dev`` is written as ``entailment_val.tsv``), OFA layout
(``data/ofa_tsv.OFA_COLUMNS["entailment"]``: uniq_id, image_id, image, hypothesis,
premise, label; no header), rows in file order, uniq_id = ``pairID``, label one of
entailment / neutral / contradiction (anything else is an error naming the line),
image = the JPEG bytes in urlsafe base64.  Every split is checked before
anything is written; each TSV is written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.data.ofa_tsv import ENTAILMENT_LABELS, OFA_COLUMNS, ImageEncoder, TsvWriter, clean_text

SPLITS = ("train", "dev", "test")
OUT_NAME = {"train": "train", "dev": "val", "test": "test"}


def read_jsonl(path: str, image_dir: str) -> List[list]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: SNLI-VE file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(d, dict):
                raise DataError(f"{path}:{lineno}: not a JSON object")
            pair = d.get("pairID", f"line {lineno}")
            where = f"{path}:{lineno}: pair {pair}"
            try:
                image_id = str(d["Flickr30K_ID"])
                premise, hypothesis, label = (clean_text(str(d[k])) for k in ("sentence1", "sentence2", "gold_label"))
            except KeyError as e:
                raise DataError(f"{where}: missing {e}") from None
            if "pairID" not in d:
                raise DataError(f"{where}: missing 'pairID'")
            if label not in ENTAILMENT_LABELS:
                raise DataError(f"{where}: gold_label {label!r} is not one of {list(ENTAILMENT_LABELS)}")
            if not premise or not hypothesis:
                raise DataError(f"{where}: empty premise or hypothesis")
            img = os.path.join(image_dir, image_id + ".jpg")
            if not os.path.isfile(img):
                raise DataError(f"{where}: image file {img} not found")
            rows.append([str(pair), image_id, img, hypothesis, premise, label])
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def prepare(data_dir: str, image_dir: str, out: str, splits: Sequence[str] = SPLITS) -> Dict[str, dict]:
    parsed = {s: read_jsonl(os.path.join(data_dir, f"snli_ve_{s}.jsonl"), image_dir) for s in splits}
    os.makedirs(out, exist_ok=True)
    encoder = ImageEncoder()
    summary = {}
    for split, rows in parsed.items():
        with TsvWriter(os.path.join(out, f"entailment_{OUT_NAME.get(split, split)}.tsv"), OFA_COLUMNS["entailment"]) as w:
            for pair, image_id, img, hyp, prem, label in rows:
                w.write([pair, image_id, encoder.encode(img), hyp, prem, label], item=f"pair {pair}")
        summary[split] = {"pairs": w.rows, "images": len({r[1] for r in rows}),
                          "labels": {lab: sum(r[5] == lab for r in rows) for lab in ENTAILMENT_LABELS}}
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with snli_ve_{train,dev,test}.jsonl")
    p.add_argument("--image-dir", required=True, help="Flickr30k image folder (<Flickr30K_ID>.jpg)")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to convert (default: train dev test)")
    a = p.parse_args(argv)
    try:
        s = prepare(a.data_dir, a.image_dir, a.out, a.splits)
    except DataError as e:
        error_exit(e, "prepare_snli_ve")
    print(f"SNLI-VE -> {a.out}")
    for split, d in s.items():
        labels = ", ".join(f"{k} {v}" for k, v in d["labels"].items())
        print(f"  entailment_{OUT_NAME.get(split, split)}.tsv: {d['pairs']} pairs on {d['images']} images ({labels})")
    return s


if __name__ == "__main__":
    main()
