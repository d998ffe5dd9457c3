"""What every self-critical criterion shares (``scst`` for AR, CTC and masked-LM models, RDT's guided
``rdt_scst``): the options, the reward, the baseline and the policy-gradient loss.

SCST (Rennie et al., CVPR 2017; the mean-of-samples baseline: Luo 2020, "A better variant of
self-critical sequence training"): with K captions w^1..w^K sampled from the model per image,

    ∇L(θ) ≈ −(1/K) Σ_k (r(w^k) − b_k)·∇ log p_θ(w^k)

- r: CIDEr-D of the caption against the image's human references, with the document frequencies
  of the reward split's references (the training split: the usual SCST corpus statistics),
  ``CorpusCiderD`` on the task's caption strings (specials stripped, the task's detokenisation);
- b_k: ``greedy`` — r of the model's greedy caption (Rennie et al.), the same for every k;
  ``mean`` — the mean reward of the other K − 1 samples of the same image (Luo 2020), which needs
  no greedy decode and K ≥ 2.

The references come from the reward split's manifest by item id, never from the batch: a model
trained on a distilled split still optimises CIDEr-D against the human captions.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from torch import Tensor

from ..errors import DataError, OptionError
from ..evaluation.coco_metrics import CorpusCiderD
from .common import logged_total

BASELINES = ["greedy", "mean"]


@dataclass
class SelfCriticalConfig(FairseqDataclass):
    num_samples: int = field(default=5, metadata={"help": "K sampled captions per image"})
    scst_baseline: ChoiceEnum(BASELINES) = field(
        default="mean", metadata={"help": "greedy: the reward of the greedy caption (Rennie et al. 2017); mean: the "
                                          "mean reward of the image's other samples (Luo 2020; needs K >= 2)"})
    reward_split: str = field(default="train", metadata={"help": "split whose references are the reward's references "
                                                                 "and give CIDEr-D's document frequencies"})


def check_self_critical(task, criterion: str, num_samples: int, baseline: str, samples_added: int = 0) -> None:
    """The options every self-critical criterion checks, each refusal one line."""
    if not getattr(task.cfg, "eval_cider", False):
        raise DataError(f"--criterion {criterion} validates by decoding: set --eval-cider (with "
                        f"--best-checkpoint-metric cider --maximize-best-checkpoint-metric)")
    if num_samples < 1:
        raise OptionError(f"--num-samples must be >= 1, got {num_samples}")
    if baseline == "mean" and num_samples + samples_added < 2:
        raise OptionError("--scst-baseline mean compares each sample with the image's other samples: "
                          "--num-samples must be >= 2")


class CaptionReward:
    """r(caption) = CIDEr-D against the item's references in the reward split, with that split's
    document frequencies (module docstring).  Built on first use (the split's manifest is read once)."""

    def __init__(self, task, split: str = "train"):
        self.task, self.split = task, split
        self._refs: Optional[Dict[str, List[str]]] = None
        self._cider: Optional[CorpusCiderD] = None

    def _load(self):
        if self._refs is None:
            given = self.task.reward_references(self.split)
            documents = {id(v): list(v) for v in given.values()}  # items sharing one list: one image, counted once
            self._refs = {str(k): documents[id(v)] for k, v in given.items()}
            self._cider = CorpusCiderD(list(documents.values()))

    def references(self, item_ids: Sequence) -> List[List[str]]:
        self._load()
        missing = [i for i in item_ids if str(i) not in self._refs]
        if missing:
            raise DataError(f"--reward-split {self.split}: no references for item {missing[0]} (the reward split "
                            f"must hold every training item)")
        return [self._refs[str(i)] for i in item_ids]

    def captions(self, token_rows: Sequence) -> List[str]:
        """Token sequences (words, maybe </s> and padding) → caption strings, cut at the first </s>."""
        eos = self.task.target_dictionary.eos()
        out = []
        for row in token_rows:
            row = torch.as_tensor(row).view(-1)
            ends = row.eq(eos).nonzero()
            out.append(self.task.caption_string(row[: int(ends[0])] if len(ends) else row))
        return out

    def __call__(self, captions: Sequence[str], item_ids: Sequence) -> np.ndarray:
        """Per-caption CIDEr-D (raw, 0..10) of ``captions[i]`` for item ``item_ids[i]``."""
        refs = self.references(item_ids)
        return self._cider.scores(list(captions), refs)


def baselines(rewards: np.ndarray, kind: str, greedy: Optional[np.ndarray] = None) -> np.ndarray:
    """b for every sample: ``rewards`` K x B (sample k of image b) → K x B.  ``greedy``: r of
    the greedy caption per image (B); ``mean``: b_kb = (Σ_j r_jb − r_kb) / (K − 1)."""
    if kind == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        return np.broadcast_to(np.asarray(greedy, dtype=float)[None, :], rewards.shape).copy()
    if kind == "mean":
        k = rewards.shape[0]
        if k < 2:
            raise ValueError("the mean baseline needs at least two samples per image")
        return (rewards.sum(0, keepdims=True) - rewards) / (k - 1)
    raise ValueError(f"unknown baseline {kind!r}; choose from {BASELINES}")


def policy_loss(logp: Tensor, rewards: np.ndarray, base: np.ndarray) -> Tensor:
    """−(1/K) Σ_k Σ_b (r_kb − b_kb)·log p_θ(w^k_b) for ``logp`` K x B (module docstring): summed over
    the batch's images, as fairseq divides by the sample size (the number of images)."""
    advantage = torch.as_tensor(rewards - base, dtype=logp.dtype, device=logp.device)
    return -(advantage * logp).sum() / logp.size(0)


class SelfCriticalCriterion(FairseqCriterion):
    """What every SCST criterion does around its own sampling: the option checks, the reward of
    the drawn captions, the baseline and the loss, the logging."""

    def __init__(self, task, name: str, num_samples: int, scst_baseline: str, reward_split: str,
                 samples_added: int = 0):
        super().__init__(task)
        check_self_critical(task, name, num_samples, scst_baseline, samples_added)
        self.k, self.baseline = num_samples, scst_baseline
        self.reward = CaptionReward(task, reward_split)

    def self_critical_loss(self, rows: Sequence, logp: Tensor, item_ids: Sequence,
                           greedy_rows: Callable[[], Sequence]):
        """``rows``: N·B token sequences, sample-major (row n·B + b: sample n of image b); ``logp``
        N x B with gradients; ``greedy_rows``: the B greedy captions, asked for only by the greedy
        baseline.  → (loss, sample size B, logging output)."""
        n, bsz = logp.size(0), len(item_ids)
        rewards = self.reward(self.reward.captions(rows), list(item_ids) * n).reshape(n, bsz)
        greedy = self.reward(self.reward.captions(greedy_rows()), item_ids) if self.baseline == "greedy" else None
        base = baselines(rewards, self.baseline, greedy)
        loss = policy_loss(logp, rewards, base)
        return loss, bsz, {"loss": loss.data, "reward": float(rewards.mean(0).sum()),
                           "baseline": float(base.mean(0).sum()), "nsentences": bsz, "sample_size": bsz, "ntokens": bsz}

    @staticmethod
    def validation_output(bsz: int, device=None):
        """Validation adds no loss: the task's --eval-cider decodes and scores (tasks/base.py)."""
        return torch.zeros((), device=device), bsz, {"loss": 0.0, "nsentences": bsz, "sample_size": bsz,
                                                     "ntokens": bsz}

    @staticmethod
    def reduce_metrics(logging_outputs: List[dict]) -> None:
        """loss, reward and baseline (CIDEr-D, 0..10) per image, averaged over the logged images."""
        total = logged_total(logging_outputs)
        n = total("sample_size")
        if not n:
            return
        metrics.log_scalar("loss", total("loss") / n, n, round=4)
        if any("reward" in log for log in logging_outputs):  # training passes only
            metrics.log_scalar("reward", total("reward") / n, n, round=4)
            metrics.log_scalar("baseline", total("baseline") / n, n, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
