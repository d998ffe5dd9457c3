#!/usr/bin/env python
"""COCO captions (Karpathy split) -> OFA caption TSVs for the NARVL ``caption`` task.

Usage::

    python scripts/prepare_vl_coco_caption.py --karpathy dataset_coco.json \\
        --image-root COCO_ROOT --out data/vl/coco

Inputs: Karpathy's ``dataset_coco.json`` (``{"images": [{"filepath": "val2014",
"filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "split":
"train"|"restval"|"val"|"test", "sentences": [{"tokens", "raw"}]}]}``) and the COCO
image folders: image ``<COCO_ROOT>/<filepath>/<filename>`` (``train2014/``, ``val2014/``).

Outputs in ``--out``, named as the ``vision_language`` task reads them (``<task>_<split>.tsv``; OFA layout, ``data/ofa_tsv.OFA_COLUMNS["caption"]``: uniq_id,
image_id, caption, objects, image; no header; image = the JPEG file's bytes in
urlsafe base64; objects empty: we have no detector tags):

- ``caption_train.tsv``: ``train`` + ``restval`` images (Karpathy's 113,287), one row
  per caption, uniq_id ``<cocoid>_<k>``;
- ``caption_val.tsv``, ``caption_test.tsv``: one row per image, uniq_id = image_id =
  cocoid, every caption joined by ``&&`` (OFA's evaluation layout);
- ``caption_val_refs.json``, ``caption_test_refs.json``: COCO-format references (image order = TSV
  row order, ids as strings), for ``score_vl --refs`` and ``cli/score.py``.

Captions are parsed and normalised exactly as ``scripts/prepare_coco_karpathy.py``
does (its ``read_karpathy``: Karpathy tokens, lower case, no punctuation; captions
empty after normalisation are skipped and counted).  Every image file is checked
to exist before anything is written; each TSV is written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.data.manifest import CaptionRow, write_coco_refs
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.files import load_json
from fairseq_nar_caption.data.ofa_tsv import CAPTION_SEP, OFA_COLUMNS, ImageEncoder, TsvWriter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_coco_karpathy import read_karpathy  # noqa: E402

SPLITS = ("train", "val", "test")


def image_paths(karpathy: str, image_root: str) -> Dict[str, str]:
    """cocoid (string) -> image file path ``<image_root>/<filepath>/<filename>``."""
    doc = load_json(karpathy, "annotation")
    paths = {}
    for k, entry in enumerate(doc["images"]):
        fp, fn = entry.get("filepath"), entry.get("filename")
        if not isinstance(fp, str) or not isinstance(fn, str):
            raise DataError(f"{karpathy}: image {entry.get('cocoid')}: needs 'filepath' and 'filename' strings")
        paths[str(entry["cocoid"])] = os.path.join(image_root, fp, fn)
    return paths


def prepare(karpathy: str, image_root: str, out: str) -> dict:
    splits, empty = read_karpathy(karpathy)
    paths = image_paths(karpathy, image_root)
    for split in SPLITS:
        if not splits[split]:
            raise DataError(f"{karpathy}: no {split} images")
    missing = [(i.item_id, paths[i.item_id]) for s in SPLITS for i in splits[s] if not os.path.isfile(paths[i.item_id])]
    if missing:
        shown = ", ".join(f"{cid} ({p})" for cid, p in missing[:5])
        raise DataError(f"{image_root}: {len(missing)} image file(s) missing, e.g. {shown}")
    for caps in (i.captions for s in SPLITS for i in splits[s]):
        bad = [c for c in caps if CAPTION_SEP in c]
        if bad:  # cannot happen after normalisation (no punctuation), kept as a guard for the && layout
            raise DataError(f"{karpathy}: caption {bad[0]!r} contains {CAPTION_SEP!r}")

    os.makedirs(out, exist_ok=True)
    encoder = ImageEncoder()
    summary = {"images": {}, "rows": {}, "empty_captions_skipped": empty}
    for split in SPLITS:
        path = os.path.join(out, f"caption_{split}.tsv")
        with TsvWriter(path, OFA_COLUMNS["caption"]) as w:
            for img in splits[split]:
                b64 = encoder.encode(paths[img.item_id])
                if split == "train":
                    for k, cap in enumerate(img.captions):
                        w.write([f"{img.item_id}_{k}", img.item_id, cap, "", b64], item=f"{img.item_id}_{k}")
                else:
                    w.write([img.item_id, img.item_id, CAPTION_SEP.join(img.captions), "", b64], item=img.item_id)
        summary["images"][split], summary["rows"][split] = len(splits[split]), w.rows
        if split != "train":
            write_coco_refs(os.path.join(out, f"caption_{split}_refs.json"),
                            [CaptionRow(img.item_id, c) for img in splits[split] for c in img.captions],
                            info={"description": f"COCO Karpathy {split} references", "source": karpathy})
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--karpathy", required=True, help="Karpathy's dataset_coco.json")
    p.add_argument("--image-root", required=True, help="folder holding train2014/ and val2014/")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    a = p.parse_args(argv)
    try:
        s = prepare(a.karpathy, a.image_root, a.out)
    except DataError as e:
        error_exit(e, "prepare_vl_coco_caption")
    print(f"COCO captions (Karpathy) -> {a.out}")
    for split in SPLITS:
        print(f"  caption_{split}.tsv: {s['images'][split]} images, {s['rows'][split]} rows")
    print(f"  captions empty after normalisation, skipped: {s['empty_captions_skipped']}")
    return s


if __name__ == "__main__":
    main()
