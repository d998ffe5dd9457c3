"""Trivial captioning baselines, the floor every model must clear.

- most-frequent caption: the most common training caption (ties: the
  lexicographically first), output for every item;
- nearest neighbour: for each eval item, the training item whose features are
  closest (cosine of the flattened feature matrices, or of the mean vector when
  items have different numbers of feature vectors), and that item's first caption.
"""
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np

from ..data.manifest import CaptionRow, eval_item_ids


def most_frequent_caption(train_rows: Sequence[CaptionRow]) -> str:
    counts = Counter(r.caption for r in train_rows)
    top = max(counts.values())
    return min(c for c, n in counts.items() if n == top)


def _embed(features, ids: List[str]) -> np.ndarray:
    arrs = [features.get(i) for i in ids]
    if len({a.shape for a in arrs}) == 1:
        x = np.stack([a.reshape(-1) for a in arrs])
    else:
        x = np.stack([a.mean(0) for a in arrs])
    x = x - x.mean(0, keepdims=True)  # centre: cosine over what distinguishes items
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def nearest_neighbour_captions(features, train_rows: Sequence[CaptionRow],
                               eval_ids: Sequence[str]) -> Dict[str, str]:
    train_ids = eval_item_ids(list(train_rows))
    first = {}
    for r in train_rows:
        first.setdefault(r.item_id, r.caption)
    both = _embed(features, train_ids + list(eval_ids))
    tr, ev = both[: len(train_ids)], both[len(train_ids):]
    out = {}
    for start in range(0, len(ev), 512):  # chunks keep the similarity matrix small
        nn_idx = (ev[start:start + 512] @ tr.T).argmax(1)
        for j, k in enumerate(nn_idx):
            out[eval_ids[start + j]] = first[train_ids[k]]
    return out
