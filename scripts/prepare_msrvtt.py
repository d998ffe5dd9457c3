#!/usr/bin/env python
"""Prepare MSR-VTT (2016) for the ``captioning`` task.

Usage::

    python scripts/prepare_msrvtt.py --annotations videodatainfo.json --out data/msrvtt \\
        [--features image_resnet101.hdf5,motion_resnext101.hdf5] [--min-count 3] [--max-words 29]

Input: the MSR-VTT 2016 annotation JSON, ``{"videos": [{"video_id": "video0",
"id": 0, "category": 0-19, "split": "train"|"validate"|"test", ...}],
"sentences": [{"video_id", "caption", "sen_id"}]}``: the full ``videodatainfo.json``
(10,000 videos, 6513/497/2990), or the challenge's ``train_val_videodatainfo.json``
and ``test_videodatainfo.json`` given together (``--annotations A B``).

Output in ``--out`` (the NACF reference ``prepare_corpora.py`` choices unless said):

- ``train.tsv``, ``val.tsv``, ``test.tsv``: manifests with ``item_id`` (the
  ``video_id``, also the feature key of the NACF HDF5 files, so use
  ``--feature-key-template '{}'``), ``caption`` (``text.normalize_caption``),
  ``pos`` (NLTK Penn Treebank tags of the caption words), ``category``;
- ``dict.txt``: words of the training captions seen at least ``--min-count`` times
  (default 3: the reference keeps counts > 2);
- ``val_refs.json``, ``test_refs.json``: COCO-format references, every normalised
  caption (nothing dropped), videos in manifest order.

Training captions:

- longer than ``--max-words`` (default 29: N_max = 30 tokens with ``</s>``) are
  DROPPED (the reference truncates them at load time; a cut sentence is a bad
  target, and there are few);
- rare words (below ``--min-count``) become ``<unk>``, as in the reference; the
  caption is kept.  The task accepts the literal ``<unk>`` in training captions
  and refuses every other word outside ``dict.txt``.  Their ``pos`` tags are those
  of the original words.

Evaluation manifests list each video's captions in annotation order, except that
the first caption within ``--max-words`` is moved to the front: the task uses an
item's first caption as its validation-loss target and refuses one longer than
``--max-target-positions``.  Captions empty after normalisation are skipped
everywhere (counted in the summary).

``--features`` checks that every file holds a 2-D array for every video (one
error naming the file and the missing ids).  Everything is read and checked before
anything is written; each file is written atomically.

The corpus writer below (``Video``, ``write_video_corpus``, ``format_summary``) is
shared with ``prepare_msvd.py``.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError, KnownError
from fairseq_nar_caption.files import load_json
from fairseq_nar_caption.data.text import normalize_caption
from fairseq_nar_caption.data.video_corpus import SPLITS, Video, format_summary, write_video_corpus

MSRVTT_SPLITS = {"train": "train", "validate": "val", "test": "test"}
NUM_CATEGORIES = 20


# --- corpus writer shared with prepare_msvd.py --------------------------------

def _field(entry, key: str, path: str, where: str, kind):
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{path}: {where}: no {key!r} field")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {where}: {key} {value!r} is not a {kind.__name__}")
    return value


def read_videodatainfo(paths: Sequence[str]):
    """Videos per split (in file order) and the number of captions that are empty
    after normalisation, from one or more MSR-VTT annotation JSON files."""
    docs = []
    for path in paths:
        doc = load_json(path, "annotation")
        for key in ("videos", "sentences"):
            if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
                raise DataError(f"{path}: no {key!r} list (expected MSR-VTT's videodatainfo.json)")
        docs.append((path, doc))

    videos: Dict[str, Video] = {}
    split_of: Dict[str, str] = {}
    for path, doc in docs:
        for k, entry in enumerate(doc["videos"]):
            vid = _field(entry, "video_id", path, f"videos[{k}]", str)
            split = _field(entry, "split", path, f"video {vid}", str)
            category = _field(entry, "category", path, f"video {vid}", int)
            if vid in videos:
                raise DataError(f"{path}: video {vid}: listed twice")
            if split not in MSRVTT_SPLITS:
                raise DataError(f"{path}: video {vid}: split {split!r} is not one of {sorted(MSRVTT_SPLITS)}")
            if not 0 <= category < NUM_CATEGORIES:
                raise DataError(f"{path}: video {vid}: category {category} outside 0-{NUM_CATEGORIES - 1}")
            videos[vid] = Video(vid, [], category)
            split_of[vid] = MSRVTT_SPLITS[split]

    empty = 0
    for path, doc in docs:
        for k, entry in enumerate(doc["sentences"]):
            vid = _field(entry, "video_id", path, f"sentences[{k}]", str)
            caption = normalize_caption(_field(entry, "caption", path, f"sentences[{k}] (video {vid})", str))
            if vid not in videos:
                raise DataError(f"{path}: sentences[{k}]: video {vid} is not in any 'videos' list")
            if caption:
                videos[vid].captions.append(caption)
            else:
                empty += 1
    uncaptioned = [vid for vid, v in videos.items() if not v.captions]
    if uncaptioned:
        raise DataError(f"{', '.join(paths)}: {len(uncaptioned)} video(s) have no caption: "
                        f"{', '.join(uncaptioned[:10])}{', ...' if len(uncaptioned) > 10 else ''}")
    splits = {split: [v for vid, v in videos.items() if split_of[vid] == split] for split in SPLITS}
    return splits, empty


def prepare(annotations: Sequence[str], out: str, min_count: int = 3, max_words: int = 29,
            feature_files: Sequence[str] = (), overwrite: bool = False) -> dict:
    splits, empty = read_videodatainfo(annotations)
    summary = write_video_corpus(out, splits, ", ".join(annotations), min_count, max_words, feature_files,
                                 name="MSR-VTT", command="prepare_msrvtt", overwrite=overwrite, inputs=annotations)
    summary["notes"] = [f"captions empty after normalisation, skipped: {empty}"]
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", nargs="+", required=True,
                   help="videodatainfo.json (or train_val_videodatainfo.json test_videodatainfo.json)")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--min-count", type=int, default=3, help="dictionary keeps training words seen this often")
    p.add_argument("--max-words", type=int, default=29, help="longer training captions are dropped")
    p.add_argument("--features", default="", help="comma-separated HDF5 files that must hold every video id")
    p.add_argument("--overwrite", action="store_true", help="replace existing files this script did not write")
    a = p.parse_args(argv)
    if a.min_count < 1 or a.max_words < 1:
        p.error("--min-count and --max-words must be >= 1")
    try:
        summary = prepare(a.annotations, a.out, a.min_count, a.max_words,
                          [f for f in a.features.split(",") if f], a.overwrite)
    except KnownError as e:
        error_exit(e, "prepare_msrvtt")
    print(format_summary("MSR-VTT", a.out, summary))
    return summary


if __name__ == "__main__":
    main()
