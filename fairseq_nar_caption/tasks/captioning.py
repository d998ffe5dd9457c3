"""The ``captioning`` task: captions over pre-extracted image or video features.

Data folder (``--data``, or the task's positional ``data`` argument)::

    dict.txt                 fairseq dictionary (words of the training captions)
    <split>.tsv              caption manifest (``data.manifest``), e.g. train/val/test
    <feature files>          HDF5 files or .npy folders (``--feature-files``), keyed by
                             ``--feature-key-template`` applied to the item id

Splits whose name starts with ``train`` (``train``, ``train_distill`` …) give one
example per caption and refuse words outside the dictionary; other splits give one
example per item (fairseq-generate sample id i = i-th item of the split, the order
of ``<split>_refs.json``) and map unseen reference words to <unk> in the loss target.

The dictionary always gets the reserved symbols ``<mask>``, ``<vis>`` and ``<blank>``
appended (in that order), so AR teachers and the NAR models of later methods
(masked-LM, visual words, CTC) share one index space and one checkpoint format.

Every model of the package trains and decodes here on the same feature folder: AR
(``ar_caption``), NACF, SAIC, NARVL over features (``narvl_features``) and RDT, whose
retrieved-sentence condition is an input file (``--retrieval-file``).  Decoding options
are the generators' own (``generators/options.py``, mixed in through ``DecodingConfig``).
"""

import logging
import os
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from ..data.caption_dataset import CaptionDataset, base_caption_dataset
from ..data.feature_store import MultiModalFeatures, open_feature_store
from ..data.frame_sampling import FrameSampledStore
from ..data.hybrid_distill import HybridDistillConfig, with_distilled_targets
from ..data.manifest import item_references, read_manifest
from ..data.retrieval import Conditions, RetrievalConfig
from ..errors import DataError
from ..generators import DecodingConfig
from .base import CaptionTaskBase, EvalCiderConfig, check_ranges, load_dictionary_with

logger = logging.getLogger(__name__)


@dataclass
class CaptioningConfig(EvalCiderConfig, DecodingConfig, RetrievalConfig, HybridDistillConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with dict.txt, <split>.tsv and features"})
    feature_files: str = field(
        default="features.h5",
        metadata={"help": "comma-separated HDF5 files / .npy folders (relative to --data or absolute); "
                          "several are modalities concatenated along time (e.g. appearance.h5,motion.h5)"})
    feature_key_template: str = field(
        default="{}", metadata={"help": "item id → key: '{}', '{}_features', '%d_grids', 'video%s' ..."})
    feature_check: ChoiceEnum(["full", "lazy"]) = field(
        default="full", metadata={"help": "full: read every feature at load time and reject NaN/Inf; "
                                          "lazy: check ids/shapes at load, values when read"})
    feature_max_abs: float = field(
        default=1e4, metadata={"help": "refuse finite feature values beyond this magnitude as corrupt; 0 = no bound"})
    frames_per_video: int = field(
        default=0, metadata={"help": "K > 0: sample K frames per item from (T, D) per-frame features (NACF: 8); "
                                     "random segment sampling for training splits, segment centres otherwise"})
    seed: int = II("common.seed")
    max_source_positions: int = field(default=256, metadata={"help": "max feature vectors per item"})
    max_target_positions: int = field(default=32, metadata={"help": "max caption tokens incl. </s>"})


@register_task("captioning", dataclass=CaptioningConfig)
class CaptioningTask(CaptionTaskBase):
    cfg: CaptioningConfig

    def __init__(self, cfg: CaptioningConfig, dictionary):
        super().__init__(cfg)
        check_ranges(cfg, [("feature_max_abs", 0), ("frames_per_video", 0), ("max_source_positions", 1),
                           ("max_target_positions", 2)])
        self.dictionary = dictionary
        paths = [self._path(p) for p in cfg.feature_files.split(",")]
        self.stores = [open_feature_store(p, cfg.feature_key_template, cfg.feature_max_abs or None) for p in paths]
        shapes = [s.peek_shape() for s in self.split_features(training=False).stores]
        if len({d for _, d in shapes}) != 1:
            raise DataError("feature stores disagree on the feature dim: "
                            + ", ".join(f"{p}: {d}" for p, (_, d) in zip(paths, shapes)))
        self.feature_dim = shapes[0][1]
        self.tokens_per_modality = [n for n, _ in shapes]
        # RDT's conditions (data/retrieval.py: the retrieval file checked against this data folder)
        self.conditions = Conditions.from_config(cfg, cfg.data, cfg.seed)

    def _path(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.cfg.data, p)

    def split_features(self, training: bool) -> MultiModalFeatures:
        """The feature stores as one split sees them (frame sampling per split, so
        training draws do not disturb evaluation)."""
        k = self.cfg.frames_per_video
        if k <= 0:
            return MultiModalFeatures(self.stores)
        mode = "random" if training else "centre"
        return MultiModalFeatures([FrameSampledStore(s, k, mode, self.cfg.seed) for s in self.stores])

    @classmethod
    def load_dictionary(cls, path):
        return load_dictionary_with(path)

    @classmethod
    def setup_task(cls, cfg: CaptioningConfig, **kwargs):
        d = cls.load_dictionary(os.path.join(cfg.data, "dict.txt"))
        logger.info(f"dictionary: {len(d)} types")
        return cls(cfg, d)

    def load_dataset(self, split, epoch=1, combine=False, per=None, **kwargs):
        """``per`` overrides the split-name rule ("caption" | "item"), e.g. to
        decode every training item once for distillation."""
        path = os.path.join(self.cfg.data, f"{split}.tsv")
        training = split.startswith("train")
        ds = CaptionDataset(
            read_manifest(path), path, self.split_features(training), self.dictionary,
            per=per or ("caption" if training else "item"),
            max_target_positions=self.cfg.max_target_positions,
            max_source_positions=self.cfg.max_source_positions,
            feature_check=self.cfg.feature_check, strict_vocab=training, shuffle=training,
            feature_dim=self.feature_dim)
        ds = with_distilled_targets(self.cfg, self.cfg.data, ds)
        if self.conditions is not None:
            ds = self.conditions.wrap(split, ds)
        self.loaded_dataset(split, ds)
        logger.info(f"{path}: {len(ds)} examples")

    def is_evaluation_dataset(self, dataset) -> bool:
        base = base_caption_dataset(dataset)
        return base is not None and base.per == "item"

    def split_references(self, dataset) -> dict:
        return base_caption_dataset(dataset).refs

    def reward_references(self, split: str) -> dict:
        """item id → the captions of ``<data>/<split>.tsv`` (the SCST reward's references)."""
        path = os.path.join(self.cfg.data, f"{split}.tsv")
        if not os.path.isfile(path):
            raise DataError(f"{path}: the reward split's manifest (--reward-split {split}) does not exist")
        return item_references(path)

    def training_targets(self, dataset):
        base = base_caption_dataset(dataset)
        return base.targets, lambda i: f"{base.manifest_path}: item {base.examples[i].item_id}"

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    @property
    def source_dictionary(self):
        return None
