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
import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from fairseq_nar_caption.data.feature_store import open_feature_store
from fairseq_nar_caption.data.manifest import CaptionRow, DataError, write_coco_refs, write_manifest
from fairseq_nar_caption.data.text import build_dictionary, normalize_caption, pos_tag_captions

SPLITS = ("train", "val", "test")
UNK = "<unk>"  # fairseq's Dictionary.unk_word
MSRVTT_SPLITS = {"train": "train", "validate": "val", "test": "test"}
NUM_CATEGORIES = 20


# --- corpus writer shared with prepare_msvd.py --------------------------------

@dataclass
class Video:
    item_id: str
    captions: List[str]  # normalised, non-empty, annotation order
    category: Optional[int] = None


def check_features(paths: Sequence[str], item_ids: Sequence[str]) -> None:
    """Every feature file holds a 2-D array under every id (keys = ids)."""
    for path in paths:
        store = open_feature_store(path)
        missing = []
        for item_id in item_ids:
            try:
                store.shape(item_id)
            except DataError:
                missing.append(item_id)
        if missing:
            shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise DataError(f"{path}: {len(missing)} of {len(item_ids)} video(s) have no 2-D features "
                            f"under their id: {shown}")


def _eval_order(captions: List[str], max_words: int) -> List[str]:
    """Captions with the first one of at most ``max_words`` words moved to the front."""
    for k, c in enumerate(captions):
        if len(c.split()) <= max_words:
            return [c] + captions[:k] + captions[k + 1:]
    return captions


def write_video_corpus(out: str, splits: Dict[str, List[Video]], source: str, min_count: int,
                       max_words: int, feature_files: Sequence[str] = (), name: str = "") -> dict:
    """Write manifests, ``dict.txt`` and references of a video corpus into ``out``.

    ``splits`` maps train/val/test to videos with normalised captions; ``source``
    names the annotation file(s) in errors.  Over-long training captions are
    dropped, training words below ``min_count`` become ``<unk>`` (see the module
    docstring).  Returns the counts that ``format_summary`` prints.
    """
    for split in SPLITS:
        if not splits.get(split):
            raise DataError(f"{source}: no {split} videos")
    check_features(feature_files, [v.item_id for split in SPLITS for v in splits[split]])

    # (video, caption) pairs per split: training drops over-long captions
    pairs: Dict[str, List[tuple]] = {}
    pairs["train"] = [(v, c) for v in splits["train"] for c in v.captions if len(c.split()) <= max_words]
    for split in ("val", "test"):
        pairs[split] = [(v, c) for v in splits[split] for c in _eval_order(v.captions, max_words)]
    tags = iter(pos_tag_captions([c.split() for split in SPLITS for _, c in pairs[split]]))
    tagged = {split: [(v, c, " ".join(next(tags))) for v, c in pairs[split]] for split in SPLITS}

    os.makedirs(out, exist_ok=True)
    vocab = {w for w, _ in build_dictionary((c for _, c in pairs["train"]), os.path.join(out, "dict.txt"),
                                            min_count=min_count)}
    unk_captions = unk_tokens = 0
    rows: Dict[str, List[CaptionRow]] = {split: [] for split in SPLITS}
    for v, c, pos in tagged["train"]:
        words = [w if w in vocab else UNK for w in c.split()]
        n_unk = words.count(UNK)
        unk_captions += int(n_unk > 0)
        unk_tokens += n_unk
        rows["train"].append(CaptionRow(v.item_id, " ".join(words), pos, v.category))
    for split in ("val", "test"):
        rows[split] = [CaptionRow(v.item_id, c, pos, v.category) for v, c, pos in tagged[split]]
    for split in SPLITS:
        write_manifest(os.path.join(out, f"{split}.tsv"), rows[split])
    for split in ("val", "test"):
        write_coco_refs(os.path.join(out, f"{split}_refs.json"), rows[split],
                        info={"description": f"{name} {split} references (normalised captions)".strip()})

    train_ids = {r.item_id for r in rows["train"]}
    return {
        "videos": {split: len({r.item_id for r in rows[split]}) for split in SPLITS},
        "captions": {split: len(rows[split]) for split in SPLITS},
        "vocab": len(vocab),
        "min_count": min_count,
        "max_words": max_words,
        "train_long_dropped": sum(len(v.captions) for v in splits["train"]) - len(pairs["train"]),
        "train_videos_without_caption": [v.item_id for v in splits["train"] if v.item_id not in train_ids],
        "train_unk_captions": unk_captions,
        "train_unk_tokens": unk_tokens,
        "eval_items_all_long": [v.item_id for split in ("val", "test") for v in splits[split]
                                if all(len(c.split()) > max_words for c in v.captions)],
    }


def format_summary(name: str, out: str, summary: dict) -> str:
    s = summary
    lines = [f"{name} -> {out}"]
    for split in SPLITS:
        lines.append(f"  {split}: {s['videos'][split]} videos, {s['captions'][split]} captions")
    lines.append(f"  dict.txt: {s['vocab']} words (seen >= {s['min_count']} times in the training captions)")
    lines.append(f"  training captions over {s['max_words']} words dropped: {s['train_long_dropped']}")
    if s["train_videos_without_caption"]:
        lines.append(f"  training videos left without a caption (not in train.tsv): "
                     f"{', '.join(s['train_videos_without_caption'])}")
    lines.append(f"  training captions with <unk>: {s['train_unk_captions']} "
                 f"({s['train_unk_tokens']} <unk> tokens)")
    if s["eval_items_all_long"]:
        lines.append(f"  evaluation videos whose captions all exceed {s['max_words']} words (raise "
                     f"--max-target-positions to load them): {', '.join(s['eval_items_all_long'])}")
    for note in s.get("notes", []):
        lines.append(f"  {note}")
    return "\n".join(lines)


# --- MSR-VTT ------------------------------------------------------------------

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
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: annotation file not found")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a JSON file ({e})")
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
            feature_files: Sequence[str] = ()) -> dict:
    splits, empty = read_videodatainfo(annotations)
    summary = write_video_corpus(out, splits, ", ".join(annotations), min_count, max_words, feature_files,
                                 name="MSR-VTT")
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
    a = p.parse_args(argv)
    if a.min_count < 1 or a.max_words < 1:
        p.error("--min-count and --max-words must be >= 1")
    try:
        summary = prepare(a.annotations, a.out, a.min_count, a.max_words,
                          [f for f in a.features.split(",") if f])
    except DataError as e:
        sys.exit(f"prepare_msrvtt: error: {e}")
    print(format_summary("MSR-VTT", a.out, summary))
    return summary


if __name__ == "__main__":
    main()
