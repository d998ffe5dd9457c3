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
between repeats (``ctc_min_positions``): otherwise loading stops naming the file and row.

Evaluation (``benchmark_scores``): caption → COCO metrics (``evaluation/coco_metrics``),
VQA → soft accuracy, grounding → Acc@IoU≥0.5, entailment → accuracy (the latter three
from ``evaluation/vl_metrics.py``).
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.manifest import DataError
from ..data.vl_dataset import ImageLoader, VLDataset, read_vl_tsv
from ..generators import build_caption_generator, generator_names
from .captioning import RESERVED_SYMBOLS

logger = logging.getLogger(__name__)
BIN_RE = re.compile(r"<bin_(\d+)>")


@dataclass
class VisionLanguageConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder with dict.txt, spm.model and <vl-task>_<split>.tsv"})
    vl_task: ChoiceEnum(["caption", "vqa", "grounding", "entailment"]) = field(
        default="caption", metadata={"help": "which of the four vision-language tasks"})
    image_dir: Optional[str] = field(
        default=None, metadata={"help": "the TSV image column holds ids of <image-dir>/<id>.png|jpg (relative to "
                                        "--data or absolute) instead of base64 images"})
    bpe_model: str = field(default="spm.model", metadata={"help": "sentencepiece model (relative to --data)"})
    patch_image_size: int = field(default=480, metadata={"help": "images are resized to this square (OFA 480)"})
    num_bins: int = field(default=1000, metadata={"help": "box coordinate bins <bin_i> (OFA 1000)"})
    seed: int = II("common.seed")
    max_source_positions: int = field(default=1024, metadata={"help": "image + prompt tokens"})
    max_target_positions: int = field(default=32, metadata={"help": "target tokens incl. </s>"})
    generator: str = field(
        default="sequence", metadata={"help": "decoding algorithm: " + ", ".join(generator_names())})
    ctc_beam: int = field(default=1, metadata={"help": "--generator ctc: 1 = argmax + collapse; K > 1 = CTC prefix "
                                                       "beam search (Table 11)"})
    ctc_no_merge: bool = field(default=False, metadata={"help": "--generator ctc: drop blanks but keep repeats "
                                                                "(for the --loss ce ablation)"})


@register_task("vision_language", dataclass=VisionLanguageConfig)
class VisionLanguageTask(FairseqTask):
    cfg: VisionLanguageConfig

    def __init__(self, cfg: VisionLanguageConfig, dictionary: Dictionary, spm):
        super().__init__(cfg)
        self.dictionary, self.spm = dictionary, spm
        self.num_positions = None  # N of a NARVL model, known after build_model
        image_dir = cfg.image_dir
        if image_dir and not os.path.isabs(image_dir):
            image_dir = os.path.join(cfg.data, image_dir)
        if image_dir and not os.path.isdir(image_dir):
            raise DataError(f"--image-dir {image_dir}: not a folder")
        self.images = ImageLoader(image_dir, cfg.patch_image_size)

    @classmethod
    def load_dictionary(cls, path, num_bins: int = 1000):
        if not os.path.isfile(path):
            raise DataError(f"{path}: dictionary not found")
        d = Dictionary.load(path)
        for i in range(num_bins):
            d.add_symbol(f"<bin_{i}>")
        for sym in RESERVED_SYMBOLS:
            d.add_symbol(sym)
        return d

    @classmethod
    def setup_task(cls, cfg: VisionLanguageConfig, **kwargs):
        import sentencepiece as spm

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
                       max_target_positions=self.cfg.max_target_positions, shuffle=training)
        self.datasets[split] = ds
        if training and self.num_positions is not None:
            self.check_fits(ds)
        logger.info(f"{path}: {len(ds)} examples")

    def check_fits(self, ds: VLDataset) -> None:
        """Refuse a query count N that cannot hold a training target with the blanks CTC
        needs between repeats (L + repeats > N makes Eq. 1's alignment set empty)."""
        from ..criterions.query_ctc import ctc_min_positions

        eos = self.dictionary.eos()
        for i, t in enumerate(ds.targets):
            need = ctc_min_positions([x for x in t.tolist() if x != eos])
            if need > self.num_positions:
                raise DataError(f"{ds.where(i)}: target needs {need} CTC positions (tokens + blanks between repeats), "
                                f"the model has --num-queries {self.num_positions}: raise --num-queries")

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not from_checkpoint and hasattr(model, "init_from_pretrained"):
            model.init_from_pretrained()
        self.num_positions = getattr(model, "num_output_positions", None)
        if self.num_positions is not None:
            for split, ds in self.datasets.items():
                if split.startswith("train"):
                    self.check_fits(ds)
        return model

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq(-fixed)'s batch_by_size drops a last partial batch unless the multiple is 1:
        # evaluation datasets keep every row.
        if isinstance(dataset, VLDataset) and not dataset.shuffle:
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        if self.cfg.generator == "sequence":
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        return build_caption_generator(self.cfg.generator, self, models, args)

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
        from ..evaluation import vl_metrics
        if task == "vqa":
            vals = [vl_metrics.vqa_score(outputs[k], dataset.rows[index[k]].answers) for k in outputs]
            return {"vqa_accuracy": sum(vals) / len(vals)}
        if task == "entailment":
            keys = list(outputs)
            return {"accuracy": vl_metrics.accuracy([outputs[k] for k in keys],
                                                    [dataset.rows[index[k]].label for k in keys])}
        keys = list(outputs)
        pred = [self.decoded_box(outputs[k], dataset, index[k]) for k in keys]
        gold = [dataset.rows[index[k]].box for k in keys]
        hits = vl_metrics.grounding_hits([p if p is not None else [0.0, 0.0, 0.0, 0.0] for p in pred], gold)
        # a hypothesis without four <bin_i> symbols counts as a miss (all-zero box has IoU 0)
        return {"acc@0.5": sum(hits) / len(hits), "malformed": sum(p is None for p in pred)}

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
