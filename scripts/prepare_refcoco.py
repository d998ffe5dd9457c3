#!/usr/bin/env python
"""RefCOCO / RefCOCO+ / RefCOCOg -> OFA grounding TSVs for the NARVL ``grounding`` task.

Usage::

    python scripts/prepare_refcoco.py --refs 'refcoco/refs(unc).p' \\
        --instances refcoco/instances.json --image-dir COCO/train2014 \\
        --out data/vl/refcoco [--name grounding] [--box-tolerance 1.0]

Inputs (the ``refer`` toolkit's files, e.g. ``refcoco/``, ``refcoco+/`` with
``refs(unc).p``, ``refcocog/`` with ``refs(umd).p`` or ``refs(google).p``):

- the refs pickle: a list of ``{"ref_id", "ann_id", "image_id", "split", "sentences":
  [{"sent_id", "sent", "raw", "tokens"}], ...}``.  It is read with an unpickler that
  allows only plain containers, strings and numbers (a pickle could otherwise run
  code);
- ``instances.json``: COCO ``images`` (``id``, ``file_name``, ``width``, ``height``)
  and ``annotations`` (``id``, ``image_id``, ``bbox`` = ``[x, y, w, h]`` pixels);
- the COCO ``train2014`` images (``<image-dir>/<file_name>``).

Outputs: ``<name>_<split>.tsv`` for every split of the pickle (unc: train, val,
testA, testB; umd: train, val, test); ``--name`` defaults to ``grounding``, the
file names the ``vision_language`` task reads (``--vl-task grounding``,
``--gen-subset testA``); OFA layout
(``data/ofa_tsv.OFA_COLUMNS["grounding"]``: uniq_id, image_id, text, box, image; no
header): one row per referring expression, uniq_id ``<ref_id>_<sent_id>``, text =
the sentence's ``sent`` (``raw`` if absent) with whitespace collapsed, box
``x0,y0,x1,y1`` = ``x, y, x + w, y + h`` in pixels of the original image (the model's
dataset quantises it with ``data/boxes.quantize_box``), image = the JPEG bytes.

Checks (DataError naming the file and the ref): unknown ann/image ids, an
annotation of another image, a box with w or h <= 0, a box outside its image by
more than ``--box-tolerance`` pixels (default 1.0; boxes that overshoot by less
are clipped to the image and counted in the summary), an image file whose size
differs from ``instances.json``, empty sentences.  Nothing is written before every
ref has been checked; each TSV is written atomically.
"""
from __future__ import annotations

import argparse
import os
import pickle
from typing import Dict, List, Optional

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.files import load_json
from fairseq_nar_caption.data.ofa_tsv import OFA_COLUMNS, ImageEncoder, TsvWriter, clean_text, format_box_field


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: refer's pickles hold dicts, lists, strings and numbers (no class is ever needed)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is expected")


def load_refs(path: str) -> list:
    try:
        with open(path, "rb") as f:
            # refer's pickles were written by Python 2: decode its byte strings as UTF-8
            refs = _PlainUnpickler(f, encoding="utf-8").load()
    except FileNotFoundError:
        raise DataError(f"{path}: refs pickle not found") from None
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable refs pickle ({e})") from None
    if not isinstance(refs, list) or not refs:
        raise DataError(f"{path}: expected a non-empty list of refs")
    return refs


def load_instances(path: str):
    doc = load_json(path, "COCO instances")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'annotations')")
    images, anns = {}, {}
    for k, im in enumerate(doc["images"]):
        try:
            images[im["id"]] = (str(im["file_name"]), int(im["width"]), int(im["height"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: images[{k}] needs 'id', 'file_name', 'width', 'height'") from None
    for k, ann in enumerate(doc["annotations"]):
        try:
            bbox = [float(v) for v in ann["bbox"]]
            if len(bbox) != 4:
                raise ValueError
            anns[ann["id"]] = (ann["image_id"], bbox)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: annotations[{k}] needs 'id', 'image_id' and a 4-number 'bbox'") from None
    return images, anns


def prepare(refs_path: str, instances_path: str, image_dir: str, out: str, name: str,
            box_tolerance: float = 1.0) -> dict:
    refs = load_refs(refs_path)
    images, anns = load_instances(instances_path)
    rows: Dict[str, List[list]] = {}
    clipped = 0
    for k, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise DataError(f"{refs_path}: refs[{k}] is not a dict")
        rid = ref.get("ref_id", f"#{k}")
        where = f"{refs_path}: ref {rid}"
        try:
            ann_id, image_id, split, sentences = ref["ann_id"], ref["image_id"], str(ref["split"]), ref["sentences"]
        except KeyError as e:
            raise DataError(f"{where}: missing {e}") from None
        if ann_id not in anns:
            raise DataError(f"{where}: annotation {ann_id} is not in {instances_path}")
        if image_id not in images:
            raise DataError(f"{where}: image {image_id} is not in {instances_path}")
        ann_image, (x, y, w, h) = anns[ann_id]
        if ann_image != image_id:
            raise DataError(f"{where}: annotation {ann_id} belongs to image {ann_image}, not {image_id}")
        file_name, width, height = images[image_id]
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: annotation {ann_id} has an empty bbox {[x, y, w, h]}")
        box = [x, y, x + w, y + h]
        over = max(-box[0], -box[1], box[2] - width, box[3] - height)
        if over > box_tolerance:
            raise DataError(f"{where}: box {box} lies outside the {width}x{height} image {image_id} by {over:.2f} px "
                            f"(more than --box-tolerance {box_tolerance})")
        if over > 0:
            box = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)]
            clipped += 1
        if not isinstance(sentences, list) or not sentences:
            raise DataError(f"{where}: no sentences")
        for j, sent in enumerate(sentences):
            text = clean_text(str(sent.get("sent") or sent.get("raw") or "")) if isinstance(sent, dict) else ""
            if not text:
                raise DataError(f"{where}: sentences[{j}] is empty")
            sid = sent.get("sent_id", j)
            rows.setdefault(split, []).append(
                [f"{rid}_{sid}", str(image_id), text, format_box_field(box), os.path.join(image_dir, file_name),
                 (width, height)])
    missing = sorted({r[4] for rs in rows.values() for r in rs if not os.path.isfile(r[4])})
    if missing:
        raise DataError(f"{image_dir}: {len(missing)} image file(s) missing, e.g. {', '.join(missing[:5])}")

    os.makedirs(out, exist_ok=True)
    encoder = ImageEncoder()
    summary = {"rows": {}, "clipped_boxes": clipped}
    for split, rs in rows.items():
        path = os.path.join(out, f"{name}_{split}.tsv")
        with TsvWriter(path, OFA_COLUMNS["grounding"]) as wr:
            for uid, iid, text, box, img_path, size in rs:
                wr.write([uid, iid, text, box, encoder.encode(img_path, expect_size=size)], item=uid)
        summary["rows"][split] = wr.rows
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refs", required=True, help="refs(unc).p / refs(umd).p / refs(google).p")
    p.add_argument("--instances", required=True, help="the dataset's instances.json")
    p.add_argument("--image-dir", required=True, help="COCO train2014 image folder")
    p.add_argument("--name", default="grounding", help="output prefix (default: grounding, as the task reads)")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--box-tolerance", type=float, default=1.0,
                   help="boxes overshooting the image by at most this many pixels are clipped (default 1.0)")
    a = p.parse_args(argv)
    try:
        s = prepare(a.refs, a.instances, a.image_dir, a.out, a.name, a.box_tolerance)
    except DataError as e:
        error_exit(e, "prepare_refcoco")
    print(f"{a.name} -> {a.out}")
    for split, n in s["rows"].items():
        print(f"  {a.name}_{split}.tsv: {n} referring expressions")
    print(f"  boxes clipped to their image (overshoot <= {a.box_tolerance} px): {s['clipped_boxes']}")
    return s


if __name__ == "__main__":
    main()
