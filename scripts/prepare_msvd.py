#!/usr/bin/env python
"""Prepare MSVD (YouTube2Text) for the ``captioning`` task.

Usage::

    python scripts/prepare_msvd.py --annotations AllVideoDescriptions.txt \\
        --mapping youtube_mapping.txt --out data/msvd \\
        [--features image_resnet101.hdf5,motion_resnext101.hdf5] [--key-prefix video] [--first-index 0]

Input, the usual release files:

- the captions, either ``AllVideoDescriptions.txt`` (``#`` header lines, then
  ``<youtube_id>_<start>_<end> <caption>`` per line) or
  ``MSR Video Description Corpus.csv`` (columns ``VideoID,Start,End,WorkerID,
  Source,AnnotationTime,Language,Description``; rows with ``Language ==
  "English"`` are kept; the clip is ``<VideoID>_<Start>_<End>``), chosen by the
  ``.csv`` extension;
- ``youtube_mapping.txt``: ``<youtube_id>_<start>_<end> vid<N>``, N in 1..1970.

Split (the standard one, as in the NACF paper and reference): vid1-vid1200
train, vid1201-vid1300 val, vid1301-vid1970 test.

Item ids = feature keys.  The NACF reference numbers the clips from 0
(``info['split']`` holds 0-1199 / 1200-1299 / 1300-1969 and its dataloader reads
HDF5 key ``"video%d"``), i.e. ``vid<N>`` is ``video<N-1>``: the default here
(``--key-prefix video --first-index 0``).  ``--key-prefix vid --first-index 1``
keeps the mapping file's own names (``vid1``..``vid1970``); in general
``vid<N>`` becomes ``<key-prefix><N - 1 + first-index>``.  Use
``--feature-key-template '{}'`` in the task.

Clips in the annotations that the mapping does not list are skipped and counted
in the summary (the CSV release covers more clips than the 1970 of the standard
split); a mapped clip without any English caption is an error (its video would
have no reference).

Outputs are those of ``prepare_msrvtt.py`` without the category column:
``train/val/test.tsv`` (``item_id``, ``caption``, ``pos``), ``dict.txt``,
``val_refs.json``, ``test_refs.json``.  The dictionary keeps every training word
(``--min-count 1``: the reference's threshold is 0), so no training caption gets
``<unk>``; training captions longer than ``--max-words`` (default 19: N_max = 20
tokens with ``</s>``) are dropped; references keep every caption.  See
``prepare_msrvtt.py`` for the details shared by both (the corpus writer lives there).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
from typing import Dict, List, Optional, Sequence

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError, KnownError
from fairseq_nar_caption.data.text import normalize_caption

from fairseq_nar_caption.data.video_corpus import SPLITS, Video, format_summary, write_video_corpus

NUM_CLIPS = 1970
SPLIT_LAST_VID = (("train", 1200), ("val", 1300), ("test", NUM_CLIPS))  # inclusive upper bounds of vid<N>
CSV_COLUMNS = ("VideoID", "Start", "End", "Language", "Description")
_MAPPING_LINE = re.compile(r"(\S+)\s+vid(\d+)")


def _read_text(path: str, encoding: str, what: str) -> str:
    """The whole file, line ends kept as they are (the CSV may quote newlines)."""
    try:
        with open(path, encoding=encoding, newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e}); pass --encoding")


def _lines(text: str) -> List[str]:
    """Lines split at line ends only (LF, CRLF, CR), not at the other characters
    ``str.splitlines`` breaks at (form feeds, unicode separators)."""
    return list(io.StringIO(text, newline=None))


def read_mapping(path: str, encoding: str = "utf-8-sig") -> Dict[str, int]:
    """Clip name → N of ``vid<N>``, checked one-to-one and within 1..1970."""
    mapping: Dict[str, int] = {}
    clip_of: Dict[int, str] = {}
    for lineno, line in enumerate(_lines(_read_text(path, encoding, "mapping file")), start=1):
        if not line.strip():
            continue
        m = _MAPPING_LINE.fullmatch(line.strip())
        if m is None:
            raise DataError(f"{path}:{lineno}: expected '<youtube_id>_<start>_<end> vid<N>', got {line.strip()!r}")
        clip, n = m.group(1), int(m.group(2))
        if not 1 <= n <= NUM_CLIPS:
            raise DataError(f"{path}:{lineno}: vid{n} outside the standard split's vid1-vid{NUM_CLIPS}")
        if clip in mapping:
            raise DataError(f"{path}:{lineno}: clip {clip} mapped twice (vid{mapping[clip]} and vid{n})")
        if n in clip_of:
            raise DataError(f"{path}:{lineno}: vid{n} given to two clips ({clip_of[n]} and {clip})")
        mapping[clip], clip_of[n] = n, clip
    if not mapping:
        raise DataError(f"{path}: mapping file has no '<clip> vid<N>' line")
    return mapping


def read_descriptions(path: str, encoding: str = "utf-8-sig") -> Dict[str, List[str]]:
    """Raw English captions per clip, in file order, from AllVideoDescriptions.txt
    or the MSR Video Description Corpus CSV (by extension)."""
    text = _read_text(path, encoding, "annotation file")
    captions: Dict[str, List[str]] = {}
    if path.lower().endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None) or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: header {header} lacks column(s) {missing}")
        col = {c: header.index(c) for c in CSV_COLUMNS}
        for rec in reader:
            if not rec:
                continue
            if len(rec) != len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(rec)}")
            if rec[col["Language"]].strip() == "English":
                clip = "_".join(rec[col[c]].strip() for c in ("VideoID", "Start", "End"))
                captions.setdefault(clip, []).append(rec[col["Description"]])
    else:
        for line in _lines(text):
            fields = line.split(None, 1)
            if not fields or fields[0].startswith("#"):
                continue
            captions.setdefault(fields[0], []).append(fields[1] if len(fields) == 2 else "")
    if not captions:
        raise DataError(f"{path}: no English caption found")
    return captions


def build_splits(descriptions: Dict[str, List[str]], mapping: Dict[str, int], annotations: str,
                 mapping_path: str, key_prefix: str = "video", first_index: int = 0):
    """Videos per split (by vid number) with normalised captions, the unmapped
    annotation clips (clip → caption count) and the number of captions empty after
    normalisation."""
    splits: Dict[str, List[Video]] = {split: [] for split in SPLITS}
    uncaptioned, empty = [], 0
    for clip, n in sorted(mapping.items(), key=lambda kv: kv[1]):
        normalised = [normalize_caption(c) for c in descriptions.get(clip, [])]
        captions = [c for c in normalised if c]
        empty += len(normalised) - len(captions)
        if not captions:
            uncaptioned.append(f"vid{n} ({clip})")
        split = next(s for s, last in SPLIT_LAST_VID if n <= last)
        splits[split].append(Video(f"{key_prefix}{n - 1 + first_index}", captions))
    if uncaptioned:
        raise DataError(f"{annotations}: {len(uncaptioned)} clip(s) of {mapping_path} have no English caption: "
                        f"{', '.join(uncaptioned[:10])}{', ...' if len(uncaptioned) > 10 else ''}")
    unmapped = {clip: len(caps) for clip, caps in descriptions.items() if clip not in mapping}
    return splits, unmapped, empty


def prepare(annotations: str, mapping_path: str, out: str, key_prefix: str = "video", first_index: int = 0,
            min_count: int = 1, max_words: int = 19, feature_files: Sequence[str] = (),
            encoding: str = "utf-8-sig", overwrite: bool = False) -> dict:
    splits, unmapped, empty = build_splits(read_descriptions(annotations, encoding),
                                           read_mapping(mapping_path, encoding),
                                           annotations, mapping_path, key_prefix, first_index)
    summary = write_video_corpus(out, splits, annotations, min_count, max_words, feature_files, name="MSVD",
                                 command="prepare_msvd", overwrite=overwrite, inputs=[annotations, mapping_path])
    examples = ", ".join(list(unmapped)[:5]) + (", ..." if len(unmapped) > 5 else "")
    summary["notes"] = [
        f"annotation clips not in {os.path.basename(mapping_path)}, skipped: {len(unmapped)} clips, "
        f"{sum(unmapped.values())} captions" + (f" ({examples})" if unmapped else ""),
        f"captions empty after normalisation, skipped: {empty}",
    ]
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True,
                   help="AllVideoDescriptions.txt or 'MSR Video Description Corpus.csv'")
    p.add_argument("--mapping", required=True, help="youtube_mapping.txt (<clip> vid<N>)")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--key-prefix", default="video", help="item id / feature key of vid<N>: prefix ...")
    p.add_argument("--first-index", type=int, default=0, help="... and the number given to vid1")
    p.add_argument("--min-count", type=int, default=1, help="dictionary keeps training words seen this often")
    p.add_argument("--max-words", type=int, default=19, help="longer training captions are dropped")
    p.add_argument("--features", default="", help="comma-separated HDF5 files that must hold every video id")
    p.add_argument("--encoding", default="utf-8-sig", help="text encoding of the annotation and mapping files")
    p.add_argument("--overwrite", action="store_true", help="replace existing files this script did not write")
    a = p.parse_args(argv)
    if a.min_count < 1 or a.max_words < 1:
        p.error("--min-count and --max-words must be >= 1")
    if a.first_index < 0 or not re.fullmatch(r"\S*", a.key_prefix):
        p.error("--first-index must be >= 0 and --key-prefix free of whitespace")
    try:
        summary = prepare(a.annotations, a.mapping, a.out, a.key_prefix, a.first_index, a.min_count,
                          a.max_words, [f for f in a.features.split(",") if f], a.encoding, a.overwrite)
    except KnownError as e:
        error_exit(e, "prepare_msvd")
    print(format_summary("MSVD", a.out, summary))
    return summary


if __name__ == "__main__":
    main()
