"""Distilled targets beside the raw captions, for SAIC's hybrid knowledge
distillation (Fei et al., Section 4.2, Algorithm 1 lines 5-7).

``HybridDistillDataset`` wraps a training ``CaptionDataset`` (one example per raw
caption) and gives every example the AR teacher's caption of the same item,
read from a distillation manifest (``nar-caption-distill`` writes
``<data>/train_distill.tsv``: one row per item).  Each example gets a
``distill_target`` (words + </s>) and the collater adds ``sample["distill_target"]``
(B x T, padded); the ``group_mask`` criterion picks, per caption, the raw or the
distilled one.  The task builds it for training splits when
``--hybrid-distill-split`` names the manifest.

Every item of the wrapped dataset must have exactly one distilled caption; a
missing or duplicated item, or a word outside the dictionary, is a ``DataError``
naming the file and the item.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
from fairseq.data import BaseWrapperDataset, data_utils
from fairseq.dataclass import FairseqDataclass

from .caption_dataset import CaptionDataset, encode_caption
from .manifest import read_manifest
from ..errors import DataError


class HybridDistillDataset(BaseWrapperDataset):
    def __init__(self, dataset: CaptionDataset, distill_path: str):
        super().__init__(dataset)
        self.distill_path = distill_path
        rows: Dict[str, str] = {}
        for r in read_manifest(distill_path):
            if r.item_id in rows:
                raise DataError(f"{distill_path}: item {r.item_id}: more than one distilled caption")
            rows[r.item_id] = r.caption
        missing = [i for i in dataset.item_order if i not in rows]
        if missing:
            shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise DataError(f"{distill_path}: no distilled caption for {len(missing)} item(s) of "
                            f"{dataset.manifest_path}: {shown}")
        self.distill_targets = {
            i: encode_caption(dataset.dictionary, rows[i], distill_path, i, dataset.max_target_positions)
            for i in dataset.item_order}

    def __getitem__(self, index):
        example = self.dataset[index]
        example["distill_target"] = self.distill_targets[example["item_id"]]
        return example

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if samples:
            d = self.dataset.dictionary
            batch["distill_target"] = data_utils.collate_tokens([s["distill_target"] for s in samples], d.pad())
        return batch

    def num_tokens_vec(self, indices) -> np.ndarray:
        return self.dataset.num_tokens_vec(indices)


@dataclass
class HybridDistillConfig(FairseqDataclass):
    """SAIC's hybrid distillation as an option of the ``captioning`` task (criterion ``group_mask``)."""
    hybrid_distill_split: Optional[str] = field(
        default=None, metadata={"help": "distillation manifest (e.g. train_distill) giving training splits a "
                                        "distill_target per caption: the AR teacher's caption of the same item"})


def with_distilled_targets(cfg, data: str, dataset):
    """A training split (one example per caption) with the distilled targets ``--hybrid-distill-split``
    names; any other dataset unchanged."""
    if cfg.hybrid_distill_split and dataset.per == "caption":
        return HybridDistillDataset(dataset, os.path.join(data, f"{cfg.hybrid_distill_split}.tsv"))
    return dataset
