"""The ``vision_language`` task: OFA-style image + prompt → text, for NARVL and its AR counterpart.

``--vl-task caption|vqa|grounding|entailment``; split ``S`` is read from
``<data>/<vl-task>_<S>.tsv`` (OFA's TSV columns, ``data/vl_dataset.py``).  Data folder::

    dict.txt        fairseq dictionary of the sentencepiece pieces (``scripts/prepare_vl_toy.py``)
    spm.model       sentencepiece model (``--bpe-model``)
    <task>_<split>.tsv

The dictionary gets ``<bin_0> … <bin_{num_bins-1}>`` (boxes, OFA's quantisation through
``data/boxes.py``) and the reserved ``<mask> <vis> <blank>`` appended when missing, in
that order, so NARVL's CTC blank and the AR teacher share one index space.

Prompts are OFA's (``vl_dataset.prompt_for``); images are resized to
``--patch-image-size`` squares.  Training splits (names starting with ``train``) are
shuffled; other splits keep file order, every row, sample id = row index.  For a
NARVL model, every training target must fit the N queries with the blanks CTC needs
between repeats (``models.narvl.ctc_min_positions``): otherwise loading stops naming the file and row.

Evaluation (``benchmark_scores``): caption → COCO metrics (``evaluation/coco_metrics``),
VQA → soft accuracy, grounding → Acc@IoU≥0.5, entailment → accuracy (the latter three
from ``evaluation/vl_metrics.py``).  ``--vl-task caption`` also validates by decoding (``--eval-cider``)
and gives the SCST reward its references (``reward_references``: every caption of the row's image).
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from ..errors import DataError, OptionError
from ..data.vl_dataset import ImageLoader, VLDataset, read_vl_tsv
from ..generators import DecodingConfig, GeneratorContext
from .base import CaptionTaskBase, EvalCiderConfig, check_ranges, load_dictionary_with

logger = logging.getLogger(__name__)
BIN_RE = re.compile(r"<bin_(\d+)>")


@dataclass
class VisionLanguageConfig(EvalCiderConfig, DecodingConfig):
    data: str = field(default=MISSING, metadata={"help": "folder with dict.txt, spm.model and <vl-task>_<split>.tsv"})
    vl_task: ChoiceEnum(["caption", "vqa", "grounding", "entailment"]) = field(
        default="caption", metadata={"help": "which of the four vision-language tasks"})
    image_dir: Optional[str] = field(
        default=None, metadata={"help": "the TSV image column holds ids of <image-dir>/<id>.png|jpg (relative to "
                                        "--data or absolute) instead of base64 images"})
    image_check: ChoiceEnum(["full", "lazy"]) = field(
        default="full", metadata={"help": "full: decode every image at load time; lazy: check files/headers at "
                                          "load, decode when read"})
    bpe_model: str = field(default="spm.model", metadata={"help": "sentencepiece model (relative to --data)"})
    patch_image_size: int = field(default=480, metadata={"help": "images are resized to this square (OFA 480)"})
    num_bins: int = field(default=1000, metadata={"help": "box coordinate bins <bin_i> (OFA 1000)"})
    seed: int = II("common.seed")
    max_source_positions: int = field(default=1024, metadata={"help": "image + prompt tokens"})
    max_target_positions: int = field(default=32, metadata={"help": "target tokens incl. </s>"})


@register_task("vision_language", dataclass=VisionLanguageConfig)
class VisionLanguageTask(CaptionTaskBase):
    cfg: VisionLanguageConfig

    def __init__(self, cfg: VisionLanguageConfig, dictionary: Dictionary, spm):
        super().__init__(cfg)
        self.dictionary, self.spm = dictionary, spm
        image_dir = cfg.image_dir
        if image_dir and not os.path.isabs(image_dir):
            image_dir = os.path.join(cfg.data, image_dir)
        if image_dir and not os.path.isdir(image_dir):
            raise DataError(f"--image-dir {image_dir}: not a folder")
        self.images = ImageLoader(image_dir, cfg.patch_image_size)
        if getattr(cfg, "eval_cider", False):
            self._captions_only("--eval-cider")

    @classmethod
    def load_dictionary(cls, path, num_bins: int = 1000):
        return load_dictionary_with(path, [f"<bin_{i}>" for i in range(num_bins)])

    @classmethod
    def setup_task(cls, cfg: VisionLanguageConfig, **kwargs):
        import sentencepiece as spm

        check_ranges(cfg, [("patch_image_size", 16), ("num_bins", 2), ("max_source_positions", 1),
                           ("max_target_positions", 2)])
        d = cls.load_dictionary(os.path.join(cfg.data, "dict.txt"), cfg.num_bins)
        path = cfg.bpe_model if os.path.isabs(cfg.bpe_model) else os.path.join(cfg.data, cfg.bpe_model)
        if not os.path.isfile(path):
            raise DataError(f"{path}: sentencepiece model not found (--bpe-model)")
        sp = spm.SentencePieceProcessor(model_file=path)
        logger.info(f"dictionary: {len(d)} types; task {cfg.vl_task}")
        return cls(cfg, d, sp)

    # --------------------------------------------------------------------- text and boxes
    def encode(self, text: str) -> torch.LongTensor:
        pieces = self.spm.encode(text.strip().lower(), out_type=str)
        return torch.LongTensor([self.dictionary.index(p) for p in pieces])

    @staticmethod
    def detokenize(text: str) -> str:
        """Dictionary string of sentencepiece pieces → text (fairseq's ``sentencepiece`` post-process)."""
        return text.replace(" ", "").replace("\u2581", " ").strip()

    def bin_token_ids(self) -> List[int]:
        return [self.dictionary.index(f"<bin_{i}>") for i in range(self.cfg.num_bins)]

    def box_tokens(self, box, width, height) -> torch.LongTensor:
        from ..data.boxes import quantize_box  # Eq.: OFA's rule, round(x / size · (bins − 1))
        return torch.LongTensor([self.dictionary.index(f"<bin_{b}>")
                                 for b in quantize_box(box, width, height, self.cfg.num_bins)])

    # --------------------------------------------------------------------- data
    def split_path(self, split: str) -> str:
        return os.path.join(self.cfg.data, f"{self.cfg.vl_task}_{split}.tsv")

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        path = self.split_path(split)
        training = split.startswith("train")
        ds = VLDataset(read_vl_tsv(path, self.cfg.vl_task, training), path, self.cfg.vl_task, self.images,
                       self.dictionary, self.encode, self.box_tokens,
                       max_target_positions=self.cfg.max_target_positions, shuffle=training,
                       image_check=self.cfg.image_check)
        self.loaded_dataset(split, ds)
        logger.info(f"{path}: {len(ds)} examples")

    def is_evaluation_dataset(self, dataset) -> bool:
        return isinstance(dataset, VLDataset) and not dataset.shuffle

    def training_targets(self, dataset):
        return dataset.targets, dataset.where

    def _captions_only(self, what: str) -> None:
        if self.cfg.vl_task != "caption":
            raise OptionError(f"{what} scores captions against references: --vl-task caption (this task is "
                              f"--vl-task {self.cfg.vl_task})")

    def split_references(self, dataset: VLDataset) -> dict:
        """uniq id → the reference captions of an evaluation split's row (``--eval-cider``)."""
        self._captions_only("--eval-cider")
        return {r.uniq_id: r.references for r in dataset.rows}

    def reward_references(self, split: str) -> dict:
        """uniq id → every human caption of its image in ``caption_<split>.tsv`` (the SCST reward's
        references).  OFA's training layout has one row per caption (or one per image, captions joined
        by ``&&``): the rows of one image id share one list, which the reward counts once in CIDEr-D's
        document frequencies (``criterions/self_critical.py``)."""
        self._captions_only("self-critical training")
        ds = self.datasets.get(split)
        rows = ds.rows if isinstance(ds, VLDataset) else read_vl_tsv(self.split_path(split), "caption", True)
        by_image: Dict[str, List[str]] = {}
        seen = set()
        for r in rows:
            refs = by_image.setdefault(r.image_id, [])
            if (r.image_id, tuple(r.references)) not in seen:  # a row repeating its image's && list adds nothing
                seen.add((r.image_id, tuple(r.references)))
                refs.extend(r.references)
        return {r.uniq_id: by_image[r.image_id] for r in rows}

    def generator_context(self) -> GeneratorContext:
        ctx = super().generator_context()
        if self.cfg.vl_task == "grounding":  # CTC decodes exactly four <bin_i>
            ctx.box_symbols = self.bin_token_ids()
        return ctx

    # --------------------------------------------------------------------- evaluation
    def post_process_hypothesis(self, text: str) -> str:
        """Hook of ``inference.decode_batch``: dictionary string → output text."""
        return self.detokenize(text)

    def decoded_box(self, text: str, dataset: VLDataset, index: int) -> Optional[List[float]]:
        from ..data.boxes import dequantize_box
        bins = [int(b) for b in BIN_RE.findall(text)]
        if len(bins) != 4:
            return None
        w, h = dataset.image_sizes[index]
        return dequantize_box(bins, w, h, self.cfg.num_bins)

    def benchmark_scores(self, dataset: VLDataset, outputs: Dict[str, str], metrics=("Bleu", "CIDEr-D")) -> dict:
        """Quality of ``outputs`` (uniq id → decoded text) on ``dataset`` (hook of cli/benchmark.py)."""
        index = {r.uniq_id: i for i, r in enumerate(dataset.rows)}
        task = self.cfg.vl_task
        if task == "caption":
            from ..evaluation.coco_metrics import coco_scores
            refs = {k: dataset.rows[index[k]].references for k in outputs}
            return coco_scores(refs, outputs, spice="off", metrics=list(metrics))
        from ..evaluation.vl_metrics import accuracy, grounding_hits, vqa_score
        if task == "vqa":
            vals = [vqa_score(outputs[k], dataset.rows[index[k]].answers) for k in outputs]
            return {"vqa_accuracy": sum(vals) / len(vals)}
        if task == "entailment":
            keys = list(outputs)
            return {"accuracy": accuracy([outputs[k] for k in keys],
                                                    [dataset.rows[index[k]].label for k in keys])}
        keys = list(outputs)
        pred = [self.decoded_box(outputs[k], dataset, index[k]) for k in keys]
        gold = [dataset.rows[index[k]].box for k in keys]
        hits = grounding_hits([p if p is not None else [0.0, 0.0, 0.0, 0.0] for p in pred], gold)
        # a hypothesis without four <bin_i> symbols counts as a miss (all-zero box has IoU 0)
        return {"acc@0.5": sum(hits) / len(hits), "malformed": sum(p is None for p in pred)}

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    @property
    def source_dictionary(self):
        return self.dictionary
