"""The ``rdt_captioning`` task: ``captioning`` plus RDT's retrieved-sentence condition
and the diffusion generator's options.

    --retrieval-file retrieval.json   (relative to --data or absolute; cli/retrieve.py writes it)
    --retrieval-topk 5                training: one of the item's top-k sentences, uniformly
    --retrieval-gt-prob 0             training: probability of another GT caption of the item instead
    --retrieval-test-rank 0           evaluation: the retrieved sentence of this rank (0 = top-1)
    --cascade-manifests a.tsv,b.tsv   first-stage captions (one row per item) for training a cascaded
                                      second-stage model (nar-caption-distill with the first model writes them)
    --generator diffusion --diffusion-steps 50 --time-difference 0 [--diffusion-noise] [--diffusion-seed 1]

Evaluation splits get the top-1 retrieved sentence (data/retrieval.py).
"""
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.retrieval import RetrievalDataset, load_cascade_manifests, load_retrieval_file
from ..generators import generator_names
from .captioning import CaptioningConfig, CaptioningTask


@dataclass
class RDTCaptioningConfig(CaptioningConfig):
    generator: str = field(
        default="diffusion", metadata={"help": "decoding algorithm for fairseq-generate: " + ", ".join(generator_names())})
    retrieval_file: Optional[str] = field(
        default=None, metadata={"help": "JSON of retrieved sentences per item (cli/retrieve.py)"})
    retrieval_topk: int = field(default=5, metadata={"help": "training samples among the top-k retrieved sentences"})
    retrieval_gt_prob: float = field(
        default=0.0, metadata={"help": "training: probability of conditioning on another GT caption of the item"})
    retrieval_test_rank: int = field(
        default=0, metadata={"help": "evaluation splits: condition on the retrieved sentence of this rank (0 = top-1)"})
    cascade_manifests: Optional[str] = field(
        default=None, metadata={"help": "comma-separated manifests (relative to --data) with a first-stage caption "
                                        "per item: the condition of a cascaded (second-stage) RDT in training"})
    diffusion_steps: int = field(default=50, metadata={"help": "T: reverse steps (Algorithm 1)"})
    time_difference: float = field(default=0.0, metadata={"help": "Δ: s = t − 1 − Δ (Eq. 3-7)"})
    diffusion_noise: bool = field(
        default=False, metadata={"help": "add the μ(s', t')·ε term of Eq. 7 (default: deterministic, as the reference)"})
    diffusion_seed: int = field(default=1, metadata={"help": "x_T (and ε) of item i drawn from seed + sample id"})
    cascade_steps: int = field(default=0, metadata={"help": "T of the first model when decoding a cascade "
                                                            "(--path first.pt:second.pt); 0 = --diffusion-steps"})
    cascade_time_difference: float = field(default=0.0, metadata={"help": "Δ of the first model of a cascade"})


@register_task("rdt_captioning", dataclass=RDTCaptioningConfig)
class RDTCaptioningTask(CaptioningTask):
    cfg: RDTCaptioningConfig

    def __init__(self, cfg: RDTCaptioningConfig, dictionary):
        super().__init__(cfg, dictionary)
        self.retrieval_path = self._path(cfg.retrieval_file) if cfg.retrieval_file else None
        self.retrieved = load_retrieval_file(self.retrieval_path) if self.retrieval_path else None
        self.cascade_source = ",".join(self._path(p) for p in cfg.cascade_manifests.split(",")) \
            if cfg.cascade_manifests else ""
        self.cascade = load_cascade_manifests(self.cascade_source.split(",")) if cfg.cascade_manifests else None

    def _path(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.cfg.data, p)

    def load_dataset(self, split, epoch=1, combine=False, per=None, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, per=per, **kwargs)
        if self.retrieved is not None or self.cascade is not None:
            self.datasets[split] = RetrievalDataset(
                self.datasets[split], self.retrieved, self.retrieval_path, self.cfg.retrieval_topk,
                self.cfg.retrieval_gt_prob, self.cfg.seed, self.cascade, self.cascade_source,
                self.cfg.retrieval_test_rank)
