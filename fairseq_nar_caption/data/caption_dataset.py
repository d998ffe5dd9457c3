"""Captioning dataset over pre-extracted features.

Two views of one manifest:

- ``per="caption"`` (training): one example per caption row;
- ``per="item"`` (evaluation): one example per image/video in
  ``manifest.eval_item_ids`` order, target = its first caption, all captions kept
  as ``references`` for multi-reference scoring.  fairseq-generate's sample id
  ``i`` is therefore the i-th id of the split's reference JSON.

The collater yields the keys fairseq's stock ``SequenceGenerator`` understands for
non-token sources::

    net_input = {"features": B x N x D float, "padding_mask": B x N bool (True = pad),
                 "prev_output_tokens": B x T}
    target    = B x T   (caption + </s>)

Validation happens here, at load time: missing/ill-shaped/NaN features (via the
feature store), empty or over-long captions, and words outside the dictionary
stop with one ``DataError`` naming the file and the item.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from .feature_store import MultiModalFeatures
from .manifest import CaptionRow, eval_item_ids, item_references
from ..errors import DataError
from .visual_words import coarse_pos

logger = logging.getLogger(__name__)


def encode_caption(dictionary, caption: str, where: str, item_id: str, max_tokens: int,
                   strict: bool = True) -> torch.LongTensor:
    """Words → ids + </s>.  ``strict``: a word outside the dictionary is an error;
    otherwise it becomes <unk> (used for evaluation targets, whose references are
    scored as raw text and may legitimately hold words the model cannot emit)."""
    words = caption.split()
    if not words:
        raise DataError(f"{where}: item {item_id}: empty caption")
    if len(words) + 1 > max_tokens:
        raise DataError(f"{where}: item {item_id}: caption of {len(words)} words is longer than "
                        f"--max-target-positions {max_tokens} allows (words + </s>): {caption!r}")
    ids = []
    for w in words:
        i = dictionary.index(w)
        if i == dictionary.unk() and strict and w != dictionary.unk_word:
            raise DataError(f"{where}: item {item_id}: word {w!r} is not in the dictionary")
        ids.append(i)
    ids.append(dictionary.eos())
    return torch.LongTensor(ids)


def collate_features(arrays: List[torch.Tensor]):
    """(N_i x D) tensors → (B x max N x D) zero-padded features and a (B x max N)
    padding mask, True at padded positions (the mask is what models look at)."""
    n = max(a.size(0) for a in arrays)
    feats = arrays[0].new_zeros(len(arrays), n, arrays[0].size(1))
    padding_mask = torch.ones(len(arrays), n, dtype=torch.bool)
    for i, a in enumerate(arrays):
        feats[i, : a.size(0)] = a
        padding_mask[i, : a.size(0)] = False
    return feats, padding_mask


class SourceTargetSizes:
    """fairseq's size protocol (batching by size, filtering) from ``src_sizes`` / ``tgt_sizes``."""

    src_sizes: np.ndarray
    tgt_sizes: np.ndarray

    def num_tokens(self, index):
        return max(self.src_sizes[index], self.tgt_sizes[index])

    def num_tokens_vec(self, indices):
        return np.maximum(self.src_sizes[indices], self.tgt_sizes[indices])

    def size(self, index):
        return (self.src_sizes[index], self.tgt_sizes[index])

    @property
    def sizes(self):
        return np.stack([self.src_sizes, self.tgt_sizes], axis=1)


class CaptionDataset(SourceTargetSizes, FairseqDataset):
    def __init__(self, rows: List[CaptionRow], manifest_path: str, features: MultiModalFeatures,
                 dictionary, per: str = "caption", max_target_positions: int = 32,
                 max_source_positions: int = 1024, feature_check: str = "full",
                 strict_vocab: bool = True, shuffle: bool = True, feature_dim: Optional[int] = None):
        if per not in ("caption", "item"):
            raise ValueError(f"per must be 'caption' or 'item', got {per!r}")
        self.manifest_path, self.features, self.dictionary, self.per = manifest_path, features, dictionary, per
        self.shuffle = shuffle
        self.rows = rows
        self.item_order = eval_item_ids(rows)
        self.refs = item_references(rows)
        # features: presence, shape, values of every item, before anything trains
        self.tokens_per_modality, self.feature_dim = features.validate(
            self.item_order, dim=feature_dim, max_tokens=max_source_positions, check=feature_check)
        n_unk = 0
        if per == "caption":
            examples = rows
        else:
            first = {}
            for r in rows:
                first.setdefault(r.item_id, r)
            examples = [first[i] for i in self.item_order]
        self.examples = examples
        self.targets = []
        for r in examples:
            t = encode_caption(dictionary, r.caption, manifest_path, r.item_id, max_target_positions, strict_vocab)
            n_unk += int((t == dictionary.unk()).sum())
            self.targets.append(t)
        if n_unk:
            logger.info(f"{manifest_path}: {n_unk} reference word(s) outside the dictionary mapped to <unk> "
                        f"in loss targets (scoring uses the raw references)")
        self.tgt_sizes = np.array([len(t) for t in self.targets], dtype=np.int64)
        # Per item: distribution of its captions' word counts in this manifest (NACF
        # Eq. 3 target L*; for a training split, training captions only).
        self.max_target_positions = max_target_positions
        self.length_dist = {}
        for item_id, caps in self.refs.items():
            hist = np.bincount([len(c.split()) for c in caps], minlength=max_target_positions)
            self.length_dist[item_id] = torch.from_numpy(hist[:max_target_positions] / hist.sum()).float()
        self.src_sizes = np.array([sum(features.stores[m].shape(r.item_id)[0] for m in range(len(features.stores)))
                                   for r in examples], dtype=np.int64)

    # FairseqDataset API -------------------------------------------------------
    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        r = self.examples[index]
        return {
            "id": index,
            "item_id": r.item_id,
            "features": torch.from_numpy(self.features.get(r.item_id)),
            "target": self.targets[index],
            "references": self.refs[r.item_id],
            "row": r,
        }

    def target_pos(self, row: CaptionRow) -> torch.LongTensor:
        """Coarse POS class per target token (``visual_words``; 0 for </s>)."""
        return torch.LongTensor([coarse_pos(t) for t in row.pos.split()] + [0])

    def collater(self, samples):
        if not samples:
            return {}
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        feats, padding_mask = collate_features([s["features"] for s in samples])
        targets = [s["target"] for s in samples]
        target = data_utils.collate_tokens(targets, pad, eos, left_pad=False)
        prev = data_utils.collate_tokens(targets, pad, eos, left_pad=False, move_eos_to_beginning=True)
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "item_ids": [s["item_id"] for s in samples],
            "references": [s["references"] for s in samples],
            "nsentences": len(samples),
            "ntokens": int(sum(len(t) for t in targets)),
            "net_input": {"features": feats, "padding_mask": padding_mask, "prev_output_tokens": prev},
            "target": target,
            "length_target": torch.stack([self.length_dist[s["item_id"]] for s in samples]),
        }
        if all(s["row"].category is not None for s in samples):
            batch["net_input"]["category"] = torch.LongTensor([s["row"].category for s in samples])
        if all(s["row"].pos is not None for s in samples):
            batch["target_pos"] = data_utils.collate_tokens([self.target_pos(s["row"]) for s in samples], 0)
        return batch

    def set_epoch(self, epoch):
        """fairseq calls this before each epoch: fresh random frame draws per epoch."""
        for store in self.features.stores:
            if hasattr(store, "set_epoch"):
                store.set_epoch(epoch)

    def ordered_indices(self):
        indices = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        # bucket by caption length (stable) so batches carry little padding
        return indices[np.argsort(self.tgt_sizes[indices], kind="mergesort")]

    @property
    def supports_prefetch(self):
        return False


def base_caption_dataset(dataset) -> Optional[CaptionDataset]:
    """The CaptionDataset inside wrapper datasets (``.dataset`` chains), or None."""
    while not isinstance(dataset, CaptionDataset):
        if not hasattr(dataset, "dataset"):
            return None
        dataset = dataset.dataset
    return dataset
