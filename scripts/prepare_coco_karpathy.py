#!/usr/bin/env python
"""Prepare MS COCO with the Karpathy split for the ``captioning`` task (SAIC,
Section 5.1: 113,287 / 5,000 / 5,000 images, words seen fewer than 5 times omitted).

Usage::

    python scripts/prepare_coco_karpathy.py --annotations dataset_coco.json --out data/coco \\
        [--features coco_detections.hdf5 --feature-key-template '%d_features'] \\
        [--min-count 5] [--max-words 20]

Input: Karpathy's ``dataset_coco.json``, ``{"images": [{"cocoid": 391895, "split":
"train"|"restval"|"val"|"test", "sentences": [{"tokens": [...], "raw": "..."}], ...}],
"dataset": "coco"}``.

Output in ``--out`` (written with the corpus writer the video scripts share,
``data/video_corpus.write_video_corpus``, which is generic over items):

- ``train.tsv`` (``train`` + ``restval`` images: the standard 113,287), ``val.tsv``,
  ``test.tsv``: manifests with ``item_id`` = the ``cocoid`` (the feature key is
  then ``--feature-key-template`` applied to it, e.g. ``'%d_features'`` for the
  M2 / PNAIC ``coco_detections.hdf5``), ``caption`` and NLTK ``pos`` tags;
- ``dict.txt``: words of the kept training captions seen at least ``--min-count``
  times (default 5, the common choice and the paper's);
- ``val_refs.json``, ``test_refs.json``: COCO-format references, every caption.

Captions are Karpathy's ``tokens`` joined by spaces (``raw`` when an entry has no
tokens), normalised with ``text.normalize_caption`` (lower case, punctuation
deleted); captions empty after that are skipped and counted.  Training captions
longer than ``--max-words`` (default 20; ``--max-target-positions`` must be at
least words + 1, and SAIC with group size k needs k·⌈N/k⌉ + 1) are dropped, not
cut; rare words (below ``--min-count``) become ``<unk>`` in training captions (the
task accepts the literal ``<unk>`` there), their ``pos`` tags are those of the
original words.  References keep every caption whole.

``--features`` checks that every file holds a 2-D array under the key of every
image (one error naming the file and the missing ids) before anything is written.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError, KnownError
from fairseq_nar_caption.files import load_json
from fairseq_nar_caption.data.text import normalize_caption
from fairseq_nar_caption.data.video_corpus import SPLITS, Video, check_features, write_video_corpus

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(path: str):
    """Images per split (file order) and the number of captions empty after normalisation."""
    doc = load_json(path, "annotation")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: no 'images' list (expected Karpathy's dataset_coco.json)")
    splits: Dict[str, List[Video]] = {s: [] for s in SPLITS}
    seen, empty = set(), 0
    for k, entry in enumerate(doc["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("cocoid"), int) or isinstance(entry["cocoid"], bool):
            raise DataError(f"{path}: images[{k}]: no integer 'cocoid'")
        cid = str(entry["cocoid"])
        split = entry.get("split")
        if split not in KARPATHY_SPLITS:
            raise DataError(f"{path}: image {cid}: split {split!r} is not one of {sorted(KARPATHY_SPLITS)}")
        if cid in seen:
            raise DataError(f"{path}: image {cid}: listed twice")
        seen.add(cid)
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"{path}: image {cid}: no 'sentences' list")
        captions = []
        for j, s in enumerate(sentences):
            tokens, raw = (s.get("tokens"), s.get("raw")) if isinstance(s, dict) else (None, None)
            if isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
                text = " ".join(tokens)
            elif isinstance(raw, str):
                text = raw
            else:
                raise DataError(f"{path}: image {cid}: sentences[{j}] has neither 'tokens' nor 'raw'")
            caption = normalize_caption(text)
            if caption:
                captions.append(caption)
            else:
                empty += 1
        if not captions:
            raise DataError(f"{path}: image {cid}: no caption")
        splits[KARPATHY_SPLITS[split]].append(Video(cid, captions))
    return splits, empty


def prepare(annotations: str, out: str, min_count: int = 5, max_words: int = 20, feature_files: Sequence[str] = (),
            feature_key_template: str = "{}", overwrite: bool = False) -> dict:
    splits, empty = read_karpathy(annotations)
    for split in SPLITS:
        if not splits[split]:
            raise DataError(f"{annotations}: no {split} images")
    check_features(feature_files, [v.item_id for s in SPLITS for v in splits[s]], feature_key_template, "image")
    summary = write_video_corpus(out, splits, annotations, min_count, max_words, name="COCO Karpathy",
                                 command="prepare_coco_karpathy", overwrite=overwrite,
                                 inputs=[annotations, *feature_files])
    summary["empty_captions_skipped"] = empty
    return summary


def format_summary(out: str, s: dict) -> str:
    lines = [f"COCO Karpathy -> {out}"]
    lines += [f"  {split}: {s['videos'][split]} images, {s['captions'][split]} captions" for split in SPLITS]
    lines.append(f"  dict.txt: {s['vocab']} words (seen >= {s['min_count']} times in the training captions)")
    lines.append(f"  training captions over {s['max_words']} words dropped: {s['train_long_dropped']}")
    lines.append(f"  training captions with <unk>: {s['train_unk_captions']} ({s['train_unk_tokens']} <unk> tokens)")
    lines.append(f"  captions empty after normalisation, skipped: {s['empty_captions_skipped']}")
    if s["train_videos_without_caption"]:
        lines.append(f"  training images left without a caption (not in train.tsv): "
                     f"{', '.join(s['train_videos_without_caption'])}")
    if s["eval_items_all_long"]:
        lines.append(f"  evaluation images whose captions all exceed {s['max_words']} words (raise "
                     f"--max-target-positions to load them): {', '.join(s['eval_items_all_long'])}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="Karpathy's dataset_coco.json")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--min-count", type=int, default=5, help="dictionary keeps training words seen this often")
    p.add_argument("--max-words", type=int, default=20, help="longer training captions are dropped")
    p.add_argument("--features", default="", help="comma-separated HDF5 files / .npy folders that must hold "
                                                  "every image")
    p.add_argument("--feature-key-template", default="{}",
                   help="cocoid -> feature key, as the task's option: '{}', '%%d_features' (M2 / PNAIC)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files this script did not write")
    a = p.parse_args(argv)
    if a.min_count < 1 or a.max_words < 1:
        p.error("--min-count and --max-words must be >= 1")
    try:
        summary = prepare(a.annotations, a.out, a.min_count, a.max_words, [f for f in a.features.split(",") if f],
                          a.feature_key_template, a.overwrite)
    except KnownError as e:
        error_exit(e, "prepare_coco_karpathy")
    print(format_summary(a.out, summary))
    return summary


if __name__ == "__main__":
    main()
