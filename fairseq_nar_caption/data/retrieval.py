"""Retrieved sentences (and first-stage captions) beside the caption examples, for RDT.

Retrieval file (written by ``cli/retrieve.py``), JSON::

    {"embedding": "<how the sentences were ranked>", "k": 20, "settings": {...},
     "fingerprint": {...the data it was made on...},
     "items": {"<item_id>": ["best sentence", "second", ...], ...}}

A retrieval file belongs to the data it was made on (this module is the one home of that
rule, for the retrieval file and for the ranker ``.npz`` beside it):

- ``data_fingerprint`` (written by ``nar-caption-retrieve``): the sha256 of the training
  manifest (the sentence pool and the ridge fit) and of each retrieved split's manifest, and
  for each feature store its file name, kind, item count, the (N, D) most items have, and for
  an HDF5 file its size in bytes and its ``extractor_settings`` attribute (feature files are
  never hashed whole: they can be tens of GB);
- ``RetrievalFile(path, data)`` (the task's ``--retrieval-file``): the items are checked (every
  list non-empty, every sentence text), then the fingerprint against ``data``: the training
  manifest's sha256 is recomputed, and ``check_split`` recomputes that of a retrieved split
  when the task loads it (a split the file was not made for must find all its items in the
  file, ``require_items``); every retrieved sentence must be a caption of the training
  manifest.  A file without a fingerprint (made by hand, or before fingerprints existed), a
  manifest that differs, or a foreign sentence is one ``DataError`` naming the retrieval file,
  the data file and the fix (run ``nar-caption-retrieve`` again on this data).
  ``check_fingerprint`` is the same check for the ranker (``cli/retrieve.py``'s ``Ranker.load``).
- ``retrieval_document(items, fingerprint, ...)``: the JSON object of a retrieval file, what
  ``nar-caption-retrieve`` writes and how a test builds a file by hand.

``RetrievalDataset`` wraps a caption dataset (``CaptionDataset``, possibly inside
``HybridDistillDataset``) and adds ``net_input["retrieved_tokens"]`` (B x L_r, words +
</s>, padded): the semantic condition of RDT's Semantic Transformer.

- training splits (one example per caption): with probability ``gt_prob`` a human caption
  of the same item from the retrieval file's training manifest (the sentence pool; never the
  target itself, so with distilled targets any of the item's human captions), otherwise one
  of the item's top-``topk`` retrieved sentences, uniformly (the reference samples 5 of its
  20 sentences, one per GT caption); the draw is seeded by (seed, epoch, index).
  ``train_condition`` (an ablation of what the condition is worth in training): ``random`` =
  a sentence drawn from every sentence of the retrieval file, ``none`` = no sentence;
- other splits: the top-1 sentence (``test_rank`` r > 0: the (r+1)-th, e.g. to decode one
  image with several conditions for the diversity of Table VII).  ``test_condition`` (a
  diagnostic of how much a model relies on its condition): ``random`` = a sentence drawn
  from every sentence of the retrieval file (all are training captions), seeded by
  (seed, index), unrelated to the image; ``none`` = a single <pad>, i.e. every retrieved
  slot is masked out of the Semantic Transformer's attention; ``reference`` = the item's
  first reference caption of its own split (a copy test: a model that edits its condition
  scores far above the retrieved condition with it).

With ``cascade`` (item id → a first-stage model's caption, from manifests such as
``nar-caption-distill`` writes) the batch also gets ``cascade_tokens`` (B x T), the
condition of a second-stage (cascaded) RDT model.

Every item of the wrapped split must have an entry; a missing item, an empty list or an
empty sentence is a ``DataError`` naming the file and the item.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, data_utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from .caption_dataset import base_caption_dataset, encode_caption
from .manifest import item_references, read_manifest
from ..errors import DataError, OptionError
from ..files import load_json, sha256_file


TEST_CONDITIONS = ("retrieved", "random", "none", "reference")
TRAIN_CONDITIONS = ("retrieved", "random", "none")
FINGERPRINT_FORMAT = 1
REMAKE = "run nar-caption-retrieve again on this data (--overwrite replaces a file it did not make)"


# ----------------------------------------------------------------------------- the fingerprint
_SHA256: Dict[tuple, str] = {}


def manifest_sha256(path: str) -> str:
    """sha256 of a manifest, computed once per process for an unchanged file (size, mtime)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: manifest file not found ({e.strerror})") from None
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(path)
    return _SHA256[key]


def feature_identity(store) -> dict:
    """What identifies a feature store cheaply, without reading its values: file name, kind,
    item count, the (N, D) most items have; for HDF5 also its size and ``extractor_settings``."""
    from .feature_store import HDF5FeatureStore, majority_shape

    shapes = [s for s in store._all_shapes() if len(s) == 2]
    entry = {"file": os.path.basename(os.path.normpath(store.path)),
             "kind": "hdf5" if isinstance(store, HDF5FeatureStore) else "npy"}
    if isinstance(store, HDF5FeatureStore):
        settings = store._file().attrs.get("extractor_settings")
        entry.update(items=len(shapes), bytes=os.path.getsize(store.path),
                     extractor_settings=settings.decode() if isinstance(settings, bytes) else
                     (None if settings is None else str(settings)))
    else:
        entry["items"] = sum(1 for f in os.listdir(store.path) if f.endswith(".npy"))
    entry["shape"] = list(majority_shape(shapes)) if shapes else None
    return entry


def data_fingerprint(data: str, splits: Sequence[str], train_split: str = "train",
                     feature_files: str = "features.h5", key_template: str = "{}", stores=None) -> dict:
    """The data a retrieval is made on: the manifests of ``train_split`` and of ``splits`` (sha256)
    and the feature stores (``feature_identity``; ``stores``: already opened ones, else
    ``feature_files`` relative to ``data``)."""
    if stores is None:
        from .feature_store import open_feature_store

        stores = [open_feature_store(p if os.path.isabs(p) else os.path.join(data, p), key_template, None)
                  for p in feature_files.split(",")]
    manifests = {}
    for split in [train_split, *splits]:
        manifests[split] = {"file": f"{split}.tsv", "sha256": manifest_sha256(os.path.join(data, f"{split}.tsv"))}
    return {"format": FINGERPRINT_FORMAT, "train_split": train_split, "manifests": manifests,
            "features": [feature_identity(s) for s in stores]}


def _valid_fingerprint(fp) -> bool:
    if not isinstance(fp, dict) or fp.get("format") != FINGERPRINT_FORMAT:
        return False
    manifests = fp.get("manifests")
    return isinstance(fp.get("train_split"), str) and isinstance(manifests, dict) and \
        fp["train_split"] in manifests and \
        all(isinstance(m, dict) and isinstance(m.get("sha256"), str) for m in manifests.values())


def check_fingerprint(source: str, fp, data: str, splits: Sequence[str] = ()) -> None:
    """``source`` (a retrieval file or its ranker) was made on ``data``: its training manifest, and
    each of ``splits`` it was made for, hold what they held then.  One DataError otherwise."""
    if fp is None:
        raise DataError(f"{source}: no fingerprint of the data it was made on (made by hand or by an older "
                        f"nar-caption-retrieve), so it cannot be told from a retrieval of other data; {REMAKE}")
    if not _valid_fingerprint(fp):
        raise DataError(f"{source}: malformed fingerprint (format {FINGERPRINT_FORMAT} expected); {REMAKE}")
    train = fp["train_split"]
    for split in dict.fromkeys([train, *splits]):
        if split not in fp["manifests"]:
            continue  # not retrieved for this split: the task requires every item in the file instead
        path = os.path.join(data, f"{split}.tsv")
        what = "training manifest (the sentence pool)" if split == train else f"{split} manifest"
        if not os.path.isfile(path):
            raise DataError(f"{source}: made with the {what} {split}.tsv, but {path} does not exist; {REMAKE}")
        if manifest_sha256(path) != fp["manifests"][split]["sha256"]:
            raise DataError(f"{source}: made on other data: {path} is not the {what} it was made with "
                            f"(sha256 differs); {REMAKE}")


def retrieval_document(items: Dict[str, List[str]], fingerprint: dict, k: Optional[int] = None,
                       settings: Optional[dict] = None, embedding: Optional[str] = None) -> dict:
    """The JSON object of a retrieval file (``nar-caption-retrieve`` writes it; tests build files
    by hand with it): ``fingerprint`` from ``data_fingerprint``."""
    doc = {"embedding": embedding or "given", "k": k if k is not None else max(map(len, items.values()), default=0)}
    if settings is not None:
        doc["settings"] = settings
    doc.update(fingerprint=fingerprint, items=items)
    return doc


# ----------------------------------------------------------------------------- the retrieval file
class RetrievalFile:
    """A retrieval file (``--retrieval-file``) checked against the data folder it is used with
    (``data``; None: the items only, e.g. to score the retrieved sentences)."""

    def __init__(self, path: str, data: Optional[str] = None):
        self.path, self.data = path, data
        if not os.path.isfile(path):
            raise DataError(f"{path}: retrieval file not found (write it with nar-caption-retrieve)")
        obj = load_json(path, "retrieval")
        items = obj.get("items") if isinstance(obj, dict) else None
        if not isinstance(items, dict):
            raise DataError(f"{path}: expected a JSON object with an 'items' mapping item id → list of sentences")
        for item_id, sents in items.items():
            if not isinstance(sents, list) or not sents:
                raise DataError(f"{path}: item {item_id}: expected a non-empty list of sentences")
            if any(not isinstance(s, str) or not s.split() for s in sents):
                raise DataError(f"{path}: item {item_id}: empty or non-text sentence")
        self.items: Dict[str, List[str]] = items
        self.fingerprint = obj.get("fingerprint")
        self.settings = obj.get("settings")
        if data is not None:
            check_fingerprint(path, self.fingerprint, data)
            self.check_sentences()

    def check_sentences(self) -> None:
        """Every retrieved sentence is a caption of the training manifest (the pool it was drawn from)."""
        train = os.path.join(self.data, f"{self.fingerprint['train_split']}.tsv")
        captions = {r.caption for r in read_manifest(train)}
        for item_id, sents in self.items.items():
            foreign = [s for s in sents if s not in captions]
            if foreign:
                raise DataError(f"{self.path}: item {item_id}: retrieved sentence {foreign[0]!r} is not a caption "
                                f"of {train}, so the file was not made on this data; {REMAKE}")

    def check_split(self, split: str) -> None:
        """Before the task loads ``split``: its manifest is the one the file was made for."""
        if self.data is not None:
            check_fingerprint(self.path, self.fingerprint, self.data, [split])


def load_retrieval_file(path: str, data: Optional[str] = None) -> Dict[str, List[str]]:
    """item id → retrieved sentences (``RetrievalFile``; checked against ``data`` when given)."""
    return RetrievalFile(path, data).items


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
                 cascade_source: str = "", test_rank: int = 0, test_condition: str = "retrieved",
                 gt_pool: Optional[Dict[str, List[str]]] = None, train_condition: str = "retrieved"):
        super().__init__(dataset)
        base = base_caption_dataset(dataset)
        if base is None:
            raise TypeError(f"no CaptionDataset inside {type(dataset).__name__}")
        self.base, self.seed, self.epoch = base, seed, 1
        self.training = base.per == "caption"
        self.topk, self.gt_prob, self.test_rank = topk, gt_prob, test_rank
        if test_condition not in TEST_CONDITIONS:
            raise ValueError(f"--retrieval-condition must be one of {', '.join(TEST_CONDITIONS)}, got {test_condition!r}")
        if train_condition not in TRAIN_CONDITIONS:
            raise ValueError(f"--retrieval-train-condition must be one of {', '.join(TRAIN_CONDITIONS)}, "
                             f"got {train_condition!r}")
        self.test_condition, self.train_condition = test_condition, train_condition
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
            self.pool = sorted({s for sents in retrieved.values() for s in sents})  # the "random" conditions
            self.pool_tokens = {}
        self.cascade = None
        if cascade is not None:
            require_items(cascade, base, cascade_source, "first-stage caption")
            self.cascade = {i: encode_caption(d, cascade[i], cascade_source, i, max_tokens, strict=False)
                            for i in base.item_order}
        # the item's human captions (the sentence pool's), for the gt_prob draw
        self.gt = {}
        if self.training and gt_prob > 0:
            pool = base.refs if gt_pool is None else gt_pool
            for i in base.item_order:
                self.gt[i] = [encode_caption(d, c, base.manifest_path, i, max_tokens, strict=False)
                              for c in pool.get(i, [])]

    def __getattr__(self, name):  # refs, item_order, per, ... of the caption dataset
        if name in ("dataset", "base") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, epoch):
        self.epoch = epoch
        super().set_epoch(epoch)

    def _random_sentence(self, item_id: str, *seed) -> torch.Tensor:
        """A sentence drawn from every sentence of the retrieval file, seeded by ``seed``."""
        with data_utils.numpy_seed(self.seed, *seed):
            k = int(np.random.randint(len(self.pool)))
        if k not in self.pool_tokens:
            self.pool_tokens[k] = encode_caption(self.base.dictionary, self.pool[k], "retrieval pool", item_id,
                                                 self.base.max_target_positions, strict=False)
        return self.pool_tokens[k]

    def condition(self, index: int, item_id: str, target: torch.Tensor) -> torch.Tensor:
        options = self.retrieved[item_id]
        which = self.test_condition if not self.training else self.train_condition
        if which == "none":
            return torch.tensor([self.base.dictionary.pad()])  # all masked out (retrieval_padding_mask)
        if not self.training:
            if which == "random":
                return self._random_sentence(item_id, index)
            if which == "reference":
                return encode_caption(self.base.dictionary, self.base.refs[item_id][0], self.base.manifest_path,
                                      item_id, self.base.max_target_positions, strict=False)
            return options[0]
        if which == "random":
            return self._random_sentence(item_id, self.epoch, index)
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


# ----------------------------------------------------------------------------- the task's options
@dataclass
class RetrievalConfig(FairseqDataclass):
    """RDT's conditions as options of the ``captioning`` task (any other model ignores them)."""
    retrieval_file: Optional[str] = field(
        default=None, metadata={"help": "JSON of retrieved sentences per item (nar-caption-retrieve); relative "
                                        "to --data or absolute"})
    retrieval_topk: int = field(default=5, metadata={"help": "training samples among the top-k retrieved sentences"})
    retrieval_gt_prob: float = field(
        default=0.0, metadata={"help": "training: probability of conditioning on a human caption of the item (of the "
                                       "retrieval file's training manifest; never the target itself)"})
    retrieval_train_condition: ChoiceEnum(["retrieved", "random", "none"]) = field(
        default="retrieved", metadata={"help": "training splits (an ablation): retrieved = one of the top-k; random = "
                                               "a random sentence of the retrieval file; none = no sentence"})
    retrieval_test_rank: int = field(
        default=0, metadata={"help": "evaluation splits: condition on the retrieved sentence of this rank (0 = top-1)"})
    retrieval_condition: ChoiceEnum(["retrieved", "random", "none", "reference"]) = field(
        default="retrieved", metadata={"help": "evaluation splits (a diagnostic): retrieved = the sentence of "
                                               "--retrieval-test-rank; random = a random sentence of the retrieval "
                                               "file (a training caption, seeded per item); none = no sentence "
                                               "(the retrieved slots all masked out); reference = the item's first "
                                               "reference caption (a copy test)"})
    cascade_manifests: Optional[str] = field(
        default=None, metadata={"help": "comma-separated manifests (relative to --data) with a first-stage caption "
                                        "per item: the condition of a cascaded (second-stage) RDT in training"})


class Conditions:
    """What a task built from ``RetrievalConfig`` conditions its splits on: the retrieval file
    (checked against the data folder ``data``) and the first-stage captions of a cascade, read once;
    ``wrap(split, dataset)`` adds them to a split's dataset.  ``from_config`` gives None when no
    option asks for a condition."""

    def __init__(self, cfg, data: str, seed: int = 1):
        self.cfg, self.seed = cfg, seed
        path = lambda p: p if os.path.isabs(p) else os.path.join(data, p)  # noqa: E731
        self.retrieval_path = path(cfg.retrieval_file) if cfg.retrieval_file else None
        self.retrieval = RetrievalFile(self.retrieval_path, data) if self.retrieval_path else None
        self.retrieved = self.retrieval.items if self.retrieval is not None else None
        self.gt_pool = None  # the items' human captions of the sentence pool (--retrieval-gt-prob)
        if self.retrieval is not None and cfg.retrieval_gt_prob > 0:
            self.gt_pool = item_references(os.path.join(data, f"{self.retrieval.fingerprint['train_split']}.tsv"))
        self.cascade_source = ",".join(path(p) for p in cfg.cascade_manifests.split(",")) \
            if cfg.cascade_manifests else ""
        self.cascade = load_cascade_manifests(self.cascade_source.split(",")) if cfg.cascade_manifests else None

    @classmethod
    def from_config(cls, cfg, data: str, seed: int = 1) -> Optional["Conditions"]:
        """The options checked (before any data is read), then the conditions, or None."""
        if cfg.retrieval_topk < 1 or cfg.retrieval_test_rank < 0 or not 0 <= cfg.retrieval_gt_prob <= 1:
            raise OptionError(f"need --retrieval-topk >= 1, --retrieval-test-rank >= 0 and 0 <= --retrieval-gt-prob "
                              f"<= 1, got {cfg.retrieval_topk}, {cfg.retrieval_test_rank}, {cfg.retrieval_gt_prob}")
        return cls(cfg, data, seed) if cfg.retrieval_file or cfg.cascade_manifests else None

    def wrap(self, split: str, dataset):
        """``dataset`` of ``split`` with its conditions (the split's manifest checked against the
        retrieval file's fingerprint)."""
        if self.retrieval is not None:
            self.retrieval.check_split(split)
        return RetrievalDataset(dataset, self.retrieved, self.retrieval_path, self.cfg.retrieval_topk,
                                self.cfg.retrieval_gt_prob, self.seed, self.cascade, self.cascade_source,
                                self.cfg.retrieval_test_rank, self.cfg.retrieval_condition, self.gt_pool,
                                self.cfg.retrieval_train_condition)
