"""Caption manifests: one TSV row per caption.

Format (UTF-8, a leading byte-order mark accepted; tab separated, first line is a header naming the columns):

    item_id <TAB> caption [<TAB> pos] [<TAB> category]

- ``item_id``: the id of the image/video; the feature store maps it to a key
  (``FeatureStore.key_template``).  Ids are kept as strings.
- ``caption``: lower-cased, whitespace-tokenised words (``text.normalize_caption``).
- ``pos``: optional, space-separated Penn Treebank tags, one per caption word
  (written by the NLTK tagger, ``text.pos_tag_captions``).
- ``category``: optional integer class (MSR-VTT's 20 categories).

Evaluation order: ``eval_item_ids`` lists the unique item ids in first-appearance
order.  Eval datasets, the COCO reference JSON and the scorer all use this order,
so fairseq-generate's sample id ``i`` is ``eval_item_ids(manifest)[i]``.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from ..errors import DataError
from ..files import atomic_write_text, read_bytes, decode_text

logger = logging.getLogger(__name__)

REQUIRED = ("item_id", "caption")
OPTIONAL = ("pos", "category")


@dataclass(frozen=True)
class CaptionRow:
    item_id: str
    caption: str
    pos: Optional[str] = None
    category: Optional[int] = None


def read_manifest(path: str) -> List[CaptionRow]:
    rows: List[CaptionRow] = []
    text = decode_text(read_bytes(path, "manifest"), path, "manifest")
    first_line = {}
    duplicates = []
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty manifest (no header line)")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(f"{path}: header {header} lacks column(s) {missing}")
        unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
        if unknown:
            raise DataError(f"{path}: unknown column(s) {unknown}")
        col = {c: header.index(c) for c in header}
        for lineno, rec in enumerate(reader, start=2):
            if len(rec) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} fields, got {len(rec)}")
            item = rec[col["item_id"]].strip()
            if not item:
                raise DataError(f"{path}:{lineno}: empty item_id")
            cap = rec[col["caption"]].strip()
            if not cap:
                raise DataError(f"{path}:{lineno}: item {item}: empty caption")
            pos = rec[col["pos"]].strip() if "pos" in col else None
            if pos is not None and len(pos.split()) != len(cap.split()):
                raise DataError(
                    f"{path}:{lineno}: item {item}: {len(pos.split())} POS tags for "
                    f"{len(cap.split())} caption words"
                )
            cat = None
            if "category" in col:
                try:
                    cat = int(rec[col["category"]])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: item {item}: category {rec[col['category']]!r} is not an integer")
            rows.append(CaptionRow(item, cap, pos, cat))
            if (item, cap) in first_line:
                duplicates.append((lineno, item, first_line[item, cap]))
            else:
                first_line[item, cap] = lineno
    if not rows:
        raise DataError(f"{path}: manifest has no rows")
    if duplicates:
        # Kept (several annotators may write the same caption: each is a reference), but never silently.
        lineno, item, first = duplicates[0]
        logger.warning(f"{path}:{lineno}: item {item}: caption repeats line {first} "
                       f"({len(duplicates)} repeated (item, caption) row(s) in all; each counts as a reference)")
    return rows


def write_manifest(path: str, rows: Iterable[CaptionRow], made_by: Optional[str] = None) -> None:
    """Validate every row, then write atomically: a failure leaves nothing half-written
    (``made_by``: the command, entered in the folder's ledger, ``files.py``)."""
    rows = list(rows)
    if not rows:
        raise DataError(f"{path}: no rows to write (a manifest needs at least one caption)")
    cols = list(REQUIRED)
    if rows and rows[0].pos is not None:
        cols.append("pos")
    if rows and rows[0].category is not None:
        cols.append("category")
    lines = ["\t".join(cols) + "\n"]
    for r in rows:
        vals = [r.item_id, r.caption]
        if "pos" in cols:
            vals.append(r.pos)
        if "category" in cols:
            vals.append(str(r.category))
        for v in vals:
            if "\t" in v or "\n" in v:
                raise DataError(f"{path}: item {r.item_id}: field contains a tab or newline: {v!r}")
        lines.append("\t".join(vals) + "\n")
    atomic_write_text(path, "".join(lines), made_by=made_by)


def eval_item_ids(rows_or_path) -> List[str]:
    rows = read_manifest(rows_or_path) if isinstance(rows_or_path, str) else rows_or_path
    seen, order = set(), []
    for r in rows:
        if r.item_id not in seen:
            seen.add(r.item_id)
            order.append(r.item_id)
    return order


def item_references(rows_or_path) -> Dict[str, List[str]]:
    """item id → its captions, items in ``eval_item_ids`` order."""
    rows = read_manifest(rows_or_path) if isinstance(rows_or_path, str) else rows_or_path
    refs: Dict[str, List[str]] = {}
    for r in rows:
        refs.setdefault(r.item_id, []).append(r.caption)
    return refs


def write_coco_refs(path: str, rows, info: Optional[dict] = None, made_by: Optional[str] = None) -> None:
    """COCO caption-format references of a split, images in ``eval_item_ids`` order
    (= fairseq-generate sample id order).  Written atomically."""
    import json

    rows = list(rows)
    doc = {
        "info": info or {},
        "licenses": [],
        "type": "captions",
        "images": [{"id": i} for i in eval_item_ids(rows)],
        "annotations": [{"image_id": r.item_id, "id": k, "caption": r.caption}
                        for k, r in enumerate(rows, start=1)],
    }
    atomic_write_text(path, json.dumps(doc) + "\n", made_by=made_by)
