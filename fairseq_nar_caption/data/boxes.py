"""Bounding boxes as ``<bin_i>`` coordinate tokens (visual grounding, NARVL / OFA).

API (other modules code against these names):

- ``bin_symbol(i) -> "<bin_i>"`` and ``bin_index("<bin_i>") -> i`` (``None`` for any
  other string);
- ``quantize_box(box_xyxy, width, height, num_bins) -> [b0, b1, b2, b3]`` and
  ``dequantize_box(bins, width, height, num_bins) -> [x0, y0, x1, y1]``;
- ``parse_box_tokens(text) -> [k, ...]``: every ``<bin_k>`` in a decoded string;
- ``iou(a, b)``: intersection over union of two xyxy boxes.

The CTC decoding of exactly four bins from N query outputs is the CTC generator's
(``generators/ctc.py``, ``decode_box_ctc``).

Quantisation rule (OFA, public code:
``data/mm_data/refcoco_dataset.py`` with ``utils/transforms.py``): OFA resizes the
image with ``RandomResize([S], max_size=S)``, which makes the shorter side S and
then clamps *both* sides to S, i.e. the image becomes S x S and a box is scaled by
S/width horizontally and S/height vertically; ``Normalize(max_image_size=S)`` then
divides by S.  The coordinate is therefore x/width (y/height) in [0, 1] and the
token is ``<bin_{round(x / width * (num_bins - 1))}>``.  Decoding
(``utils/eval_utils.py eval_refcoco``) is bin / (num_bins - 1) * S / (S / width) =
bin / (num_bins - 1) * width.  Here we apply that rule directly to the original
image size (no dependence on the patch size), so a round trip is exact up to half
a bin: |x - dequantize(quantize(x))| <= width / (2 (num_bins - 1)).

Rounding: OFA rounds with ``torch.round`` (half to even); we use Python's
``round`` which is also half to even, so ties agree.

Unlike the public NARVL code's ``eval_refcoco`` (a bug risk there) nothing here
derives a bin from "token id - len(dict) + num_bins": the bin of a token is read
from its symbol (``bin_index``) or from an explicit ``bin_ids`` table, so a blank
appended after the bins cannot shift coordinates by one.
"""
from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence

_BIN_RE = re.compile(r"^<bin_(0|[1-9][0-9]*)>$")
_BIN_FIND_RE = re.compile(r"<bin_([0-9]+)>")


def bin_symbol(i: int) -> str:
    """The dictionary symbol of coordinate bin ``i``: ``"<bin_{i}>"``."""
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise ValueError(f"bin index must be a non-negative int, got {i!r}")
    return f"<bin_{i}>"


def bin_index(symbol: str) -> Optional[int]:
    """``i`` for the symbol ``"<bin_i>"``, ``None`` for anything else (incl. ``"<bin_01>"``)."""
    m = _BIN_RE.match(symbol) if isinstance(symbol, str) else None
    return int(m.group(1)) if m else None


def parse_box_tokens(text: str) -> List[int]:
    """Bin indices of every ``<bin_k>`` in ``text``, in order.

    Works on fairseq-generate's ``D-`` text after ``--post-process sentencepiece``,
    which removes the spaces between symbols (``"<bin_3><bin_7>..."``), and on
    space-separated symbols alike.  Text outside the symbols is ignored.
    """
    return [int(k) for k in _BIN_FIND_RE.findall(text)]


def _check_size(width, height, num_bins) -> None:
    if not (isinstance(num_bins, int) and not isinstance(num_bins, bool) and num_bins >= 2):
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    for name, v in (("width", width), ("height", height)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"image {name} must be a positive number, got {v!r}")


def quantize_box(box_xyxy: Sequence[float], width: float, height: float, num_bins: int) -> List[int]:
    """OFA's quantisation of a pixel box ``[x0, y0, x1, y1]`` into 4 bin indices.

    ``bin = round(x / width * (num_bins - 1))`` for x0, x1 and the same with
    ``height`` for y0, y1 (see the module docstring for why this is OFA's rule).

    Raises ValueError naming the box when it is not four finite numbers, is
    degenerate (x1 <= x0 or y1 <= y0) or lies (partly) outside the image
    (a coordinate < 0, x1 > width or y1 > height).
    """
    _check_size(width, height, num_bins)
    try:
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    except (TypeError, ValueError):
        raise ValueError(f"box {box_xyxy!r} is not four numbers x0, y0, x1, y1") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {list(box_xyxy)!r} has a non-finite coordinate")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {list(box_xyxy)!r} is degenerate (needs x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"box {list(box_xyxy)!r} lies outside the {width}x{height} image")
    scale = num_bins - 1
    return [int(round(x0 / width * scale)), int(round(y0 / height * scale)),
            int(round(x1 / width * scale)), int(round(y1 / height * scale))]


def dequantize_box(bins: Sequence[int], width: float, height: float, num_bins: int) -> List[float]:
    """Pixel box ``[x0, y0, x1, y1]`` of 4 bin indices: ``bin / (num_bins - 1) * width`` (height for y).

    The inverse of ``quantize_box`` up to half a bin.  The result is not
    reordered: a model may predict x1 < x0, which then simply has zero IoU.
    """
    _check_size(width, height, num_bins)
    bins = list(bins)
    if len(bins) != 4:
        raise ValueError(f"a box needs exactly 4 bins, got {len(bins)}: {bins}")
    for b in bins:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_bins:
            raise ValueError(f"bins {bins}: {b!r} is not a bin index in [0, {num_bins})")
    scale = num_bins - 1
    return [bins[0] / scale * width, bins[1] / scale * height, bins[2] / scale * width, bins[3] / scale * height]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``[x0, y0, x1, y1]`` (continuous coordinates).

    A box with x1 <= x0 or y1 <= y0 has zero area; the IoU is 0 when the union is empty.
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    area_a = max(ax1 - ax0, 0.0) * max(ay1 - ay0, 0.0)
    area_b = max(bx1 - bx0, 0.0) * max(by1 - by0, 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0
