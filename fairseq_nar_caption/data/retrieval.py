"""Retrieved sentences (and first-stage captions) beside the caption examples, for RDT.

Retrieval file (written by ``cli/retrieve.py``), JSON::

    {"embedding": "<how the sentences were ranked>", "k": 20,
     "items": {"<item_id>": ["best sentence", "second", ...], ...}}

``RetrievalDataset`` wraps a caption dataset (``CaptionDataset``, possibly inside
``HybridDistillDataset``) and adds ``net_input["retrieved_tokens"]`` (B x L_r, words +
</s>, padded): the semantic condition of RDT's Semantic Transformer.

- training splits (one example per caption): with probability ``gt_prob`` another
  ground-truth caption of the same item (never the target itself), otherwise one of the
  item's top-``topk`` retrieved sentences, uniformly (the reference samples 5 of its 20
  sentences, one per GT caption); the draw is seeded by (seed, epoch, index);
- other splits: the top-1 sentence (``test_rank`` r > 0: the (r+1)-th, e.g. to decode one
  image with several conditions for the diversity of Table VII).  ``test_condition`` (a
  diagnostic of how much a model relies on its condition): ``random`` = a sentence drawn
  from every sentence of the retrieval file (all are training captions), seeded by
  (seed, index), unrelated to the image; ``none`` = a single <pad>, i.e. every retrieved
  slot is masked out of the Semantic Transformer's attention.

With ``cascade`` (item id → a first-stage model's caption, from manifests such as
``nar-caption-distill`` writes) the batch also gets ``cascade_tokens`` (B x T), the
condition of a second-stage (cascaded) RDT model.

Every item of the wrapped split must have an entry; a missing item, an empty list or an
empty sentence is a ``DataError`` naming the file and the item.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, data_utils

from .caption_dataset import base_caption_dataset, encode_caption
from .manifest import read_manifest
from ..errors import DataError


TEST_CONDITIONS = ("retrieved", "random", "none")


def load_retrieval_file(path: str) -> Dict[str, List[str]]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: retrieval file not found (write it with python -m fairseq_nar_caption.cli.retrieve)")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    items = obj.get("items") if isinstance(obj, dict) else None
    if not isinstance(items, dict):
        raise DataError(f"{path}: expected a JSON object with an 'items' mapping item id → list of sentences")
    for item_id, sents in items.items():
        if not isinstance(sents, list) or not sents:
            raise DataError(f"{path}: item {item_id}: expected a non-empty list of sentences")
        if any(not isinstance(s, str) or not s.split() for s in sents):
            raise DataError(f"{path}: item {item_id}: empty or non-text sentence")
    return items


def load_cascade_manifests(paths: List[str]) -> Dict[str, str]:
    """item id → caption from manifests with one row per item (e.g. nar-caption-distill output)."""
    out: Dict[str, str] = {}
    for path in paths:
        for r in read_manifest(path):
            if r.item_id in out:
                raise DataError(f"{path}: item {r.item_id}: more than one first-stage caption")
            out[r.item_id] = r.caption
    return out


def require_items(found: dict, base, source: str, what: str) -> None:
    """Every item of the split must have an entry in ``found`` (read from ``source``)."""
    missing = [i for i in base.item_order if i not in found]
    if missing:
        raise DataError(f"{source}: no {what} for {len(missing)} item(s) of {base.manifest_path}, "
                        f"e.g. {missing[:5]}")


class RetrievalDataset(BaseWrapperDataset):
    def __init__(self, dataset, retrieved: Optional[Dict[str, List[str]]], retrieval_path: str, topk: int = 5,
                 gt_prob: float = 0.0, seed: int = 1, cascade: Optional[Dict[str, str]] = None,
                 cascade_source: str = "", test_rank: int = 0, test_condition: str = "retrieved"):
        super().__init__(dataset)
        base = base_caption_dataset(dataset)
        if base is None:
            raise TypeError(f"no CaptionDataset inside {type(dataset).__name__}")
        self.base, self.seed, self.epoch = base, seed, 1
        self.training = base.per == "caption"
        self.topk, self.gt_prob, self.test_rank = topk, gt_prob, test_rank
        if test_condition not in TEST_CONDITIONS:
            raise ValueError(f"--retrieval-condition must be one of {', '.join(TEST_CONDITIONS)}, got {test_condition!r}")
        self.test_condition = test_condition
        if topk < 1 or not 0 <= gt_prob <= 1:
            raise ValueError(f"need --retrieval-topk >= 1 and 0 <= --retrieval-gt-prob <= 1, got {topk}, {gt_prob}")
        d, max_tokens = base.dictionary, base.max_target_positions
        self.retrieved = None
        if retrieved is not None:
            require_items(retrieved, base, retrieval_path, "retrieved sentences")
            short = [i for i in base.item_order if len(retrieved[i]) <= (0 if self.training else test_rank)]
            if short:
                raise DataError(f"{retrieval_path}: item {short[0]} has {len(retrieved[short[0]])} sentence(s), "
                                f"no rank {test_rank} (--retrieval-test-rank counts from 0)")
            keep = slice(0, topk) if self.training else slice(test_rank, test_rank + 1)
            self.retrieved = {i: [encode_caption(d, s, retrieval_path, i, max_tokens, strict=False)
                                  for s in retrieved[i][keep]] for i in base.item_order}
            if not self.training and test_condition == "random":
                self.pool = sorted({s for sents in retrieved.values() for s in sents})
                self.pool_tokens = {}
        self.cascade = None
        if cascade is not None:
            require_items(cascade, base, cascade_source, "first-stage caption")
            self.cascade = {i: encode_caption(d, cascade[i], cascade_source, i, max_tokens, strict=False)
                            for i in base.item_order}
        # other GT captions of each item, for the gt_prob draw
        self.gt = {}
        if self.training and gt_prob > 0:
            for i, caps in base.refs.items():
                self.gt[i] = [encode_caption(d, c, base.manifest_path, i, max_tokens, strict=False) for c in caps]

    def __getattr__(self, name):  # refs, item_order, per, ... of the caption dataset
        if name in ("dataset", "base") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, epoch):
        self.epoch = epoch
        super().set_epoch(epoch)

    def condition(self, index: int, item_id: str, target: torch.Tensor) -> torch.Tensor:
        options = self.retrieved[item_id]
        if not self.training:
            if self.test_condition == "none":
                return torch.tensor([self.base.dictionary.pad()])  # all masked out (retrieval_padding_mask)
            if self.test_condition == "random":
                with data_utils.numpy_seed(self.seed, index):
                    k = int(np.random.randint(len(self.pool)))
                if k not in self.pool_tokens:
                    self.pool_tokens[k] = encode_caption(self.base.dictionary, self.pool[k], "retrieval pool", item_id,
                                                         self.base.max_target_positions, strict=False)
                return self.pool_tokens[k]
            return options[0]
        with data_utils.numpy_seed(self.seed, self.epoch, index):
            if self.gt_prob > 0 and np.random.rand() < self.gt_prob:
                others = [c for c in self.gt.get(item_id, []) if not torch.equal(c, target)]
                if others:
                    return others[np.random.randint(len(others))]
            return options[np.random.randint(len(options))]

    def __getitem__(self, index):
        example = self.dataset[index]
        if self.retrieved is not None:
            example["retrieved"] = self.condition(index, example["item_id"], example["target"])
        if self.cascade is not None:
            example["cascade"] = self.cascade[example["item_id"]]
        return example

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if samples:
            pad = self.base.dictionary.pad()
            if self.retrieved is not None:
                batch["net_input"]["retrieved_tokens"] = data_utils.collate_tokens(
                    [s["retrieved"] for s in samples], pad)
            if self.cascade is not None:
                batch["cascade_tokens"] = data_utils.collate_tokens([s["cascade"] for s in samples], pad)
        return batch

    def num_tokens_vec(self, indices) -> np.ndarray:
        return self.base.num_tokens_vec(indices)
