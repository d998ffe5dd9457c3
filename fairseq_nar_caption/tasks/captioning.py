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
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.caption_dataset import CaptionDataset, base_caption_dataset
from ..data.feature_store import MultiModalFeatures, open_feature_store
from ..data.frame_sampling import FrameSampledStore
from ..data.hybrid_distill import HybridDistillDataset
from ..data.manifest import DataError, read_manifest
from ..generators import build_caption_generator, generator_names

logger = logging.getLogger(__name__)

RESERVED_SYMBOLS = ("<mask>", "<vis>", "<blank>")


@dataclass
class CaptioningConfig(FairseqDataclass):
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
    frames_per_video: int = field(
        default=0, metadata={"help": "K > 0: sample K frames per item from (T, D) per-frame features (NACF: 8); "
                                     "random segment sampling for training splits, segment centres otherwise"})
    seed: int = II("common.seed")
    max_source_positions: int = field(default=256, metadata={"help": "max feature vectors per item"})
    max_target_positions: int = field(default=32, metadata={"help": "max caption tokens incl. </s>"})
    generator: str = field(
        default="sequence", metadata={"help": "decoding algorithm for fairseq-generate: " + ", ".join(generator_names())})
    # non-autoregressive decoding (NACF generators: mp, ef, l2r, ct-mp, ct-ef, ct-l2r)
    nar_iterations: int = field(default=5, metadata={"help": "T: decoder passes of MP (Eq. 14)"})
    nar_q: int = field(default=1, metadata={"help": "q: tokens fixed per pass by EF/L2R (Eq. 15, 17)"})
    length_beam: int = field(default=6, metadata={"help": "B: most probable lengths decoded in parallel"})
    nar_min_length: int = field(default=1, metadata={"help": "shortest caption length the length beam considers"})
    nar_skip_template_revisit: bool = field(
        default=False, metadata={"help": "CT-EF/CT-L2R: skip the last pass re-predicting template words (Eq. 16)"})
    length_norm_alpha: float = field(default=1.0, metadata={"help": "α: candidates ranked by score / N^α"})
    teacher_path: Optional[str] = field(
        default=None, metadata={"help": "AR-B checkpoint rescoring the length candidates (p_NAR·p_AR)"})
    # SAIC (models/saic.py): Outliner + Filler decoding (generators/outline_fill.py) and the
    # teacher's captions for hybrid distillation (data/hybrid_distill.py, criterion group_mask)
    outline_beam: int = field(default=5, metadata={"help": "M_out: Outliner beam size (--generator outline-fill)"})
    fill_beam: int = field(
        default=1, metadata={"help": "M_fill <= M_out: top Outliner hypotheses the Filler completes (ranked by Eq. 10)"})
    hybrid_distill_split: Optional[str] = field(
        default=None, metadata={"help": "distillation manifest (e.g. train_distill) giving training splits a "
                                        "distill_target per caption: the AR teacher's caption of the same item"})


@register_task("captioning", dataclass=CaptioningConfig)
class CaptioningTask(FairseqTask):
    cfg: CaptioningConfig

    def __init__(self, cfg: CaptioningConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        paths = [p if os.path.isabs(p) else os.path.join(cfg.data, p) for p in cfg.feature_files.split(",")]
        self.stores = [open_feature_store(p, cfg.feature_key_template) for p in paths]
        shapes = [s.peek_shape() for s in self.split_features(training=False).stores]
        if len({d for _, d in shapes}) != 1:
            raise DataError("feature stores disagree on the feature dim: "
                            + ", ".join(f"{p}: {d}" for p, (_, d) in zip(paths, shapes)))
        self.feature_dim = shapes[0][1]
        self.tokens_per_modality = [n for n, _ in shapes]

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
        if not os.path.isfile(path):
            raise DataError(f"{path}: dictionary not found")
        d = Dictionary.load(path)
        for sym in RESERVED_SYMBOLS:
            d.add_symbol(sym)
        return d

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
        self.datasets[split] = CaptionDataset(
            read_manifest(path), path, self.split_features(training), self.dictionary,
            per=per or ("caption" if training else "item"),
            max_target_positions=self.cfg.max_target_positions,
            max_source_positions=self.cfg.max_source_positions,
            feature_check=self.cfg.feature_check, strict_vocab=training, shuffle=training,
            feature_dim=self.feature_dim)
        if self.cfg.hybrid_distill_split and self.datasets[split].per == "caption":
            distill = os.path.join(self.cfg.data, f"{self.cfg.hybrid_distill_split}.tsv")
            self.datasets[split] = HybridDistillDataset(self.datasets[split], distill)
        logger.info(f"{path}: {len(self.datasets[split])} examples")

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        # fairseq does not tell the model whether it is being restored: initialise
        # from a pretrained model (e.g. NACF from AR-B) only when building afresh.
        if not from_checkpoint and hasattr(model, "init_from_pretrained"):
            model.init_from_pretrained()
        return model

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq(-fixed)'s batch_by_size drops a last batch whose size is not a multiple
        # of --required-batch-size-multiple (default 8): fairseq-generate would silently
        # skip up to 7 test items.  Evaluation datasets (also inside wrappers such as
        # RDT's retrieval dataset) are batched with multiple 1.
        base = base_caption_dataset(dataset)
        if base is not None and base.per == "item":
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        if self.cfg.generator == "sequence":  # fairseq's own beam search / sampling
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        return build_caption_generator(self.cfg.generator, self, models, args)

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return self.dictionary
