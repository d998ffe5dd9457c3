"""OFA-format TSV files of the vision-language tasks: layouts, reading, writing, images.

Column layouts (OFA's README, its TSV formats); ``OFA_COLUMNS[task]``:

=========== =====================================================================
task        columns (tab separated, no header in OFA's files)
=========== =====================================================================
caption     uniq_id, image_id, caption, objects, image
vqa         uniq_id (the question id), image_id, question, answers, objects, image
grounding   uniq_id, image_id, text, box, image
entailment  uniq_id, image_id, image, hypothesis, premise, label
=========== =====================================================================

- ``image``: the image file's bytes (JPEG/PNG), urlsafe base64 (OFA decodes with
  ``base64.urlsafe_b64decode``).  ``image_to_b64`` / ``b64_to_image``.
- ``caption``: one caption; in evaluation files (OFA's val/test) all reference
  captions of the image joined by ``&&`` (``split_captions``).
- ``answers``: ``conf|!+answer&&conf|!+answer`` (``parse_ofa_answers``);
  empty when a split has no annotations (VQAv2 test).
- ``box``: ``x0,y0,x1,y1`` in pixels of the stored image (``parse_box_field``).
- ``objects``: OFA's detector tags ("predicted objects (unused)"); we have no
  detector and write it empty.
- ``label``: ``entailment`` / ``neutral`` / ``contradiction``.

Files with a header line (the toy data's ``vqa_*.tsv``, ``grounding_*.tsv``,
``entailment_*.tsv``) name their columns; any subset of the layout's names (plus
the aliases in ``ALIASES``, e.g. ``question_id``, ``item_id``) that holds the
task's ``REQUIRED`` columns is accepted.  Without an ``image`` column the image is
found by id in an image folder (``<dir>/<image_id>.png``, ``find_image_file``).
A header is recognised when every field of the first line is a known column name.

API:

- ``iter_ofa_tsv(path, task, keep_image=True)`` yields one ``dict`` per data row
  (canonical column names as keys, plus ``"row"``: the 0-based data-row index and
  ``"line"``: the 1-based line number), in file order, never skipping a row;
  ``read_ofa_tsv(path, task, keep_image=True)`` returns the list.  Raises
  ``DataError`` naming the file, line and item for a wrong field count, an empty
  required field, or an empty file.  ``keep_image=False`` drops the base64 strings.
- ``TsvWriter(path, columns)``: a context manager writing rows to a temporary file
  next to ``path`` and renaming it on success (nothing half-written); rows whose
  fields contain a tab or newline raise ``DataError`` naming the item.
- ``clean_text(s)``: whitespace (tabs, newlines) collapsed to single spaces;
  ``ImageEncoder``: ``image_to_b64`` with a small cache (rows of one image are
  usually consecutive) and an optional size check against the annotation.
- ``image_to_b64(path)`` (checks that PIL can read the file), ``b64_to_image(s)``,
  ``image_size(s)`` (width, height from the base64 string's header only),
  ``find_image_file(image_dir, image_id)``, ``parse_box_field(s)``, ``split_captions(s)``.
"""
from __future__ import annotations

import base64
import binascii
import csv
import io
import os
import sys
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import DataError
from ..files import WRITE_ERRNOS, write_failure
from .images import to_rgb

TASKS = ("caption", "vqa", "grounding", "entailment")

OFA_COLUMNS: Dict[str, Tuple[str, ...]] = {
    "caption": ("uniq_id", "image_id", "caption", "objects", "image"),
    "vqa": ("uniq_id", "image_id", "question", "answers", "objects", "image"),
    "grounding": ("uniq_id", "image_id", "text", "box", "image"),
    "entailment": ("uniq_id", "image_id", "image", "hypothesis", "premise", "label"),
}
REQUIRED: Dict[str, Tuple[str, ...]] = {
    "caption": ("image_id", "caption"),
    "vqa": ("uniq_id", "image_id", "question"),
    "grounding": ("uniq_id", "image_id", "text", "box"),
    "entailment": ("uniq_id", "image_id", "hypothesis", "label"),
}
# header names of other files -> canonical names
ALIASES = {"question_id": "uniq_id", "item_id": "image_id", "uniq-id": "uniq_id", "image-id": "image_id", "region": "box", "region_coord": "box",
           "sentence": "text", "caption_text": "caption"}
# The one list of entailment labels (the task's targets, the scorer's, the toy data's, in this order).
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
CAPTION_SEP = "&&"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

csv.field_size_limit(sys.maxsize)  # base64 images are long fields


def _check_task(task: str) -> None:
    if task not in OFA_COLUMNS:
        raise ValueError(f"unknown VL task {task!r}; choose from {list(TASKS)}")


def _header_columns(fields: List[str], task: str) -> Optional[List[str]]:
    """Canonical column names if ``fields`` is a header line, else None."""
    known = set(OFA_COLUMNS[task]) | set(ALIASES)
    names = [f.strip() for f in fields]
    if not names or not all(n in known for n in names):
        return None
    return [ALIASES.get(n, n) for n in names]


def iter_ofa_tsv(path: str, task: str, keep_image: bool = True) -> Iterator[dict]:
    """Rows of a VL TSV as dicts (see the module docstring)."""
    _check_task(task)
    if not os.path.isfile(path):
        raise DataError(f"{path}: {task} TSV not found")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(reader, None)
        if first is None:
            raise DataError(f"{path}: empty {task} TSV")
        columns = _header_columns(first, task)
        if columns is None:
            columns, pending, start = list(OFA_COLUMNS[task]), [first], 1
        else:
            missing = [c for c in REQUIRED[task] if c not in columns]
            if missing:
                raise DataError(f"{path}: header {first} lacks the {task} column(s) {missing}")
            if len(set(columns)) != len(columns):
                raise DataError(f"{path}: header {first} names a column twice")
            pending, start = [], 2
        row_index = 0

        def records():
            yield from pending
            yield from reader

        for lineno, rec in enumerate(records(), start=start):
            item = rec[0] if rec else "?"
            if len(rec) != len(columns):
                raise DataError(
                    f"{path}:{lineno}: item {item}: expected {len(columns)} tab-separated fields "
                    f"({', '.join(columns)}) for a {task} TSV, got {len(rec)}")
            row = dict(zip(columns, rec))
            for c in REQUIRED[task]:
                if not row[c].strip():
                    raise DataError(f"{path}:{lineno}: item {item}: empty {c!r} field")
            if "image" in row and not keep_image:
                del row["image"]
            row["row"], row["line"] = row_index, lineno
            row_index += 1
            yield row
        if row_index == 0:
            raise DataError(f"{path}: {task} TSV has no data rows")


def read_ofa_tsv(path: str, task: str, keep_image: bool = True) -> List[dict]:
    """All rows of a VL TSV (``iter_ofa_tsv``) as a list."""
    return list(iter_ofa_tsv(path, task, keep_image=keep_image))


def split_captions(field: str) -> List[str]:
    """The captions of a caption field (``&&``-joined in OFA's evaluation files), stripped, empty ones dropped."""
    return [c.strip() for c in field.split(CAPTION_SEP) if c.strip()]


def parse_box_field(field: str) -> List[float]:
    """``"x0,y0,x1,y1"`` -> four floats; ValueError naming the field otherwise."""
    parts = field.strip().split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"box {field!r} is not 'x0,y0,x1,y1'") from None


def format_box_field(box: Sequence[float]) -> str:
    """Four pixel coordinates as ``"x0,y0,x1,y1"`` (integers without a decimal part, else up to 2 decimals)."""
    def fmt(v: float) -> str:
        v = round(float(v), 2)
        return str(int(v)) if v == int(v) else repr(v)

    return ",".join(fmt(v) for v in box)


def clean_text(s: str) -> str:
    """``s`` with every run of whitespace (incl. tabs and newlines) replaced by one space, stripped."""
    return " ".join(s.split())


# --- images -----------------------------------------------------------------------------------

def image_to_b64(path: str) -> str:
    """The file's bytes as urlsafe base64 (OFA's image column), after checking PIL can decode it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"{path}: image file not found") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    return base64.urlsafe_b64encode(data).decode("ascii")


def _b64_bytes(s: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(s.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise ValueError(f"not base64 ({e})") from None


def b64_to_image(s: str):
    """A PIL RGB image from an image column value (ValueError when it is not a base64 image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_b64_bytes(s))) as im:
            im.load()
            return to_rgb(im, "base64 image")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a base64 image ({e})") from None


def image_size(s: str) -> Tuple[int, int]:
    """(width, height) of an image column value, read from the image header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_b64_bytes(s))) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a base64 image ({e})") from None


class ImageEncoder:
    """``encode(path)`` = ``image_to_b64(path)``, remembering the last ``cache_size`` images.

    ``encode(path, expect_size=(w, h))`` also checks the image's size against the
    annotation's (DataError naming the file otherwise): boxes are only valid for
    the image they were drawn on.
    """

    def __init__(self, cache_size: int = 16):
        from collections import OrderedDict

        self.cache_size = cache_size
        self._cache: "OrderedDict[str, Tuple[str, Tuple[int, int]]]" = OrderedDict()

    def encode(self, path: str, expect_size: Optional[Tuple[int, int]] = None) -> str:
        if path in self._cache:
            self._cache.move_to_end(path)
            b64, size = self._cache[path]
        else:
            b64 = image_to_b64(path)
            size = image_size(b64)
            self._cache[path] = (b64, size)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if expect_size is not None and tuple(size) != tuple(expect_size):
            raise DataError(f"{path}: image is {size[0]}x{size[1]} but the annotation says "
                            f"{expect_size[0]}x{expect_size[1]}")
        return b64


def find_image_file(image_dir: str, image_id: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str:
    """``<image_dir>/<image_id><ext>`` for the first existing extension; DataError naming the tries."""
    tried = [os.path.join(image_dir, image_id + ext) for ext in extensions]
    for p in tried:
        if os.path.isfile(p):
            return p
    raise DataError(f"{image_dir}: no image file for image id {image_id} (tried {', '.join(tried)})")


# --- VQA answer fields ---------------------------------------------------------------------

ANSWER_SEP = "&&"
CONF_SEP = "|!+"


def parse_ofa_answers(field: str) -> Dict[str, float]:
    """``"0.6|!+two&&1.0|!+2"`` -> ``{"two": 0.6, "2": 1.0}`` (answers as written, stripped).

    Raises ValueError naming the field for an empty field, an entry without
    ``|!+``, a confidence that is not a number in [0, 1], an empty answer or an
    answer listed twice.
    """
    if not isinstance(field, str) or not field.strip():
        raise ValueError(f"empty VQA answer field {field!r} (expected 'conf|!+answer&&...')")
    out: Dict[str, float] = {}
    for entry in field.split(ANSWER_SEP):
        conf, sep, answer = entry.partition(CONF_SEP)
        if not sep:
            raise ValueError(f"VQA answer field {field!r}: entry {entry!r} lacks '{CONF_SEP}' (expected 'conf|!+answer')")
        try:
            c = float(conf)
        except ValueError:
            raise ValueError(f"VQA answer field {field!r}: confidence {conf!r} is not a number") from None
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"VQA answer field {field!r}: confidence {c} is outside [0, 1]")
        answer = answer.strip()
        if not answer:
            raise ValueError(f"VQA answer field {field!r}: empty answer in entry {entry!r}")
        if answer in out:
            raise ValueError(f"VQA answer field {field!r}: answer {answer!r} listed twice")
        out[answer] = c
    return out


def format_ofa_answers(answers_conf: Dict[str, float]) -> str:
    """The inverse of ``parse_ofa_answers``: highest confidence first, ties by answer."""
    if not answers_conf:
        raise ValueError("no answers to format")
    parts = []
    for answer, conf in sorted(answers_conf.items(), key=lambda kv: (-kv[1], kv[0])):
        if ANSWER_SEP in answer or CONF_SEP in answer or "\t" in answer or "\n" in answer or not answer.strip():
            raise ValueError(f"answer {answer!r} is empty or contains '&&', '|!+', a tab or a newline")
        parts.append(f"{round(float(conf), 4)!r}{CONF_SEP}{answer}")
    return ANSWER_SEP.join(parts)


# --- writing ----------------------------------------------------------------------------------

class TsvWriter:
    """Write TSV rows atomically: a temporary file in the target folder, renamed on success.

    ``with TsvWriter(path, OFA_COLUMNS["vqa"]) as w: w.write(fields, item=qid)``.
    An exception inside the block removes the temporary file and leaves ``path``
    untouched.  ``header=True`` writes the column names as the first line (OFA's
    own files have none).
    """

    def __init__(self, path: str, columns: Sequence[str], header: bool = False):
        self.path, self.columns, self.header = path, tuple(columns), header
        self.rows = 0
        self._f = None
        self._tmp = None

    def __enter__(self) -> "TsvWriter":
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".tsv")
        self._f = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.header:
            self._f.write("\t".join(self.columns) + "\n")
        return self

    def write(self, fields: Sequence[str], item: str) -> None:
        if len(fields) != len(self.columns):
            raise DataError(f"{self.path}: item {item}: {len(fields)} fields for the columns {self.columns}")
        for name, v in zip(self.columns, fields):
            if not isinstance(v, str):
                raise DataError(f"{self.path}: item {item}: field {name!r} is not a string: {v!r}")
            if "\t" in v or "\n" in v or "\r" in v:
                raise DataError(f"{self.path}: item {item}: field {name!r} contains a tab or newline: {v[:80]!r}")
        self._f.write("\t".join(fields) + "\n")
        self.rows += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._f.close()
            if exc_type is None:
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.path)
                return
        except OSError as e:
            exc = e
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # a full disk: one line, nothing written
            raise write_failure(self.path, exc) from None
        if exc_type is None:
            raise exc
