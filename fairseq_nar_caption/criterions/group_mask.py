"""SAIC training (Fei et al., Algorithm 1): group-aware sampling, competence-aware
curriculum learning and hybrid knowledge distillation, as one fairseq criterion.

Our reading of Algorithm 1, per training batch of B captions:

1. Hybrid distillation (lines 5-7): each caption is the raw one with probability
   p_hybr, otherwise the AR teacher's distilled caption of the same image
   (``distill_target``, added by ``data/hybrid_distill.py`` through the task
   option ``--hybrid-distill-split``).  p_hybr = 1: raw data only; p_hybr = 0:
   sequence-level distillation only (Table 5).
2. Curriculum (line 9, Eq. 9): p_g = (t/T)^λ, t = the update number, T =
   ``--curriculum-updates`` (the paper: all training steps; set it to --max-update),
   clipped to 1 after T.
3. Split (line 10): n_g = p_g·B rows (stochastically rounded, so its expectation is
   exactly p_g·B), drawn at random, form the group-aware batch B_g; the other rows
   form the conventional batch B_c.
4. Samples (line 10, "four kinds of training samples"): every row of B_c gives an
   AIC sample (group size 1: the Outliner with k = 1, i.e. the causal AR decoder,
   loss on every word and </s>) and an NAIC sample (the decoder without a mask on
   the caption + </s> with a uniformly drawn number 1..N of its words replaced by
   <mask>, as the masked-prediction IR-NAIC model of Section 2.3 / [19] trains;
   loss on the masked words); every row of B_g gives an Outliner sample (group size
   k, loss on the outline z_0..z_m) and a Filler sample (loss on the k−1 slots after
   every outlined word).  Layouts: ``models/saic.py``.
5. Joint optimisation (line 11): the four label-smoothed NLL sums are added and
   divided by the number of predicted tokens (fairseq's sample_size), one backward:
   each caption contributes two samples, "the double of the batch size".

Validation (no gradient) scores the final SAIC objective, deterministically: raw
captions, p_g = 1 (Outliner + Filler).
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.data import data_utils
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import DataError, OptionError
from ..models.saic import filler_layout, filler_targets, outline_layout
from .common import label_smoothed_nll, log_bits, logged_total, random_mask

TERMS = ("aic", "naic", "outliner", "filler")


@dataclass
class GroupMaskCriterionConfig(FairseqDataclass):
    curriculum_updates: int = field(
        default=0, metadata={"help": "T of Eq. 9, p_g reaches 1 after T updates: the total number of training "
                                     "updates in the paper (required unless --curriculum-lambda 0)"})
    curriculum_lambda: float = field(
        default=1.0, metadata={"help": "λ of Eq. 9 (1: p_g grows linearly; 0: p_g = 1 throughout, no curriculum)"})
    p_hybr: float = field(
        default=0.5, metadata={"help": "hybrid distillation: probability of the raw caption, else the AR teacher's "
                                       "(needs --hybrid-distill-split unless 1)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of all four losses"})


def group_proportion(t: int, total: int, lam: float) -> float:
    """p_g = (t/T)^λ (Eq. 9), at most 1."""
    return min(1.0, (t / total) ** lam)


def split_batch(bsz: int, p_g: float, device=None) -> Tensor:
    """Algorithm 1, line 10: a bool mask of the rows going to {Outliner, Filler}; their
    number is ⌊p_g·B⌋ plus one with probability frac(p_g·B), the rows are random."""
    expected = p_g * bsz
    n_group = int(math.floor(expected)) + int(torch.rand(()) < expected - math.floor(expected))
    grouped = torch.zeros(bsz, dtype=torch.bool, device=device)
    grouped[torch.randperm(bsz, device=device)[:n_group]] = True
    return grouped


def hybrid_targets(raw: Tensor, distilled: Tensor, p_hybr: float, pad: int) -> Tuple[Tensor, Tensor]:
    """Algorithm 1, lines 5-7: per row the raw caption with probability p_hybr, else the
    distilled one (both B x T*: words, </s>, pad).  Returns (targets, from_raw)."""
    from_raw = torch.rand(raw.size(0), device=raw.device) < p_hybr
    rows = [r if use else d for r, d, use in zip(raw, distilled, from_raw.tolist())]
    return data_utils.collate_tokens([r[r.ne(pad)] for r in rows], pad), from_raw


@register_criterion("group_mask", dataclass=GroupMaskCriterionConfig)
class GroupMaskCriterion(FairseqCriterion):
    def __init__(self, task, curriculum_updates, curriculum_lambda, p_hybr, label_smoothing):
        super().__init__(task)
        if curriculum_lambda < 0:
            raise OptionError(f"--curriculum-lambda must be >= 0, got {curriculum_lambda}")
        if curriculum_lambda > 0 and curriculum_updates <= 0:
            raise OptionError("Eq. 9 needs the total T: set --curriculum-updates (e.g. to --max-update), "
                             "or --curriculum-lambda 0 for p_g = 1 throughout")
        if not 0 <= p_hybr <= 1:
            raise OptionError(f"--p-hybr must be in [0, 1], got {p_hybr}")
        self.total, self.lam, self.p_hybr, self.eps = curriculum_updates, curriculum_lambda, p_hybr, label_smoothing
        d = task.target_dictionary
        self.eos, self.mask = d.eos(), d.index("<mask>")

    # ------------------------------------------------------------------ pieces
    def _check_lengths(self, sample, k: int, max_positions: int) -> None:
        """The group layouts need k·⌈N/k⌉ + 1 decoder positions; say which captions do not fit."""
        for key in ("target", "distill_target"):
            if key not in sample:
                continue
            n = (sample[key].ne(self.padding_idx) & sample[key].ne(self.eos)).sum(1)
            need = (n + k - 1) // k * k + 1
            bad = (need > max_positions).nonzero().view(-1).tolist()
            if bad:
                items = [sample["item_ids"][i] for i in bad[:5]] if "item_ids" in sample else bad[:5]
                raise DataError(f"{key} of item(s) {items}: {int(n[bad[0]])} words need {int(need[bad[0]])} decoder "
                                 f"positions with group size {k}, more than --max-target-positions {max_positions}; "
                                 f"drop longer captions or raise it (for the AR teacher too)")

    def _nll(self, logits: Tensor, target: Tensor) -> Tuple[Tensor, Tensor, int]:
        """Label-smoothed NLL summed over the non-pad positions of ``target`` (ε/(V−1) on each
        other word, as fairseq's ``label_smoothed_cross_entropy``: ``common``)."""
        lprobs = F.log_softmax(logits.float(), dim=-1)
        pad = target.eq(self.padding_idx)
        loss, nll = label_smoothed_nll(lprobs, target, self.eps, ignore=pad, reduce=True, spread="others")
        return loss, nll, int((~pad).sum())

    def _conventional(self, model, target, encoder_out) -> Dict[str, Tuple[Tensor, Tensor, int]]:
        """{AIC, NAIC} samples of the rows of B_c."""
        pad = self.padding_idx
        prev, heads = outline_layout(target, 1, self.eos, pad)
        terms = {"aic": self._nll(model.forward_outliner(prev, encoder_out, group_size=1), heads)}
        words = target.masked_fill(target.eq(self.eos), pad)
        masked = random_mask(words, words.ne(pad).sum(1), 0.0, 1.0, pad)  # 1..N masks, uniform (CMLM)
        logits = model.forward_filler(target.masked_fill(masked, self.mask), encoder_out)
        terms["naic"] = self._nll(logits, target.masked_fill(~masked, pad))
        return terms

    def _group_aware(self, model, target, encoder_out) -> Dict[str, Tuple[Tensor, Tensor, int]]:
        """{Outliner, Filler} samples of the rows of B_g (no Filler term when k = 1)."""
        k, pad = model.group_size, self.padding_idx
        prev, heads = outline_layout(target, k, self.eos, pad)
        terms = {"outliner": self._nll(model.forward_outliner(prev, encoder_out), heads)}
        filler_in = filler_layout(heads, k, self.mask, pad)
        filler_tgt = filler_targets(target, filler_in, k, self.eos, pad)
        if filler_tgt.ne(pad).any():
            terms["filler"] = self._nll(model.forward_filler(filler_in, encoder_out), filler_tgt)
        return terms

    # ------------------------------------------------------------------ forward
    def forward(self, model, sample, reduce=True):
        if not hasattr(model, "forward_filler"):
            raise OptionError(f"--criterion group_mask trains SAIC (--arch saic), got {type(model).__name__}")
        self._check_lengths(sample, model.group_size, model.decoder.max_positions())
        raw = sample["target"]
        bsz = raw.size(0)
        if model.training:
            if self.p_hybr < 1:
                if "distill_target" not in sample:
                    raise OptionError(f"hybrid distillation (--p-hybr {self.p_hybr} < 1) needs the AR teacher's "
                                     f"captions: set --hybrid-distill-split (e.g. train_distill), or --p-hybr 1")
                target, from_raw = hybrid_targets(raw, sample["distill_target"], self.p_hybr, self.padding_idx)
            else:
                target, from_raw = raw, torch.ones(bsz, dtype=torch.bool)
            p_g = group_proportion(model.num_updates, self.total, self.lam) if self.lam > 0 else 1.0
            grouped = split_batch(bsz, p_g, raw.device)
        else:
            target, from_raw, p_g = raw, torch.ones(bsz, dtype=torch.bool), 1.0
            grouped = torch.ones(bsz, dtype=torch.bool, device=raw.device)

        encoder_out = model.forward_encoder(sample["net_input"])
        terms: Dict[str, Tuple[Tensor, Tensor, int]] = {}
        for rows, build in ((~grouped, self._conventional), (grouped, self._group_aware)):
            if rows.any():
                idx = rows.nonzero().view(-1)
                tgt = target.index_select(0, idx)
                tgt = tgt[:, : int(tgt.ne(self.padding_idx).sum(1).max())]
                terms.update(build(model, tgt, model.encoder.reorder_encoder_out(encoder_out, idx)))

        loss = sum(t[0] for t in terms.values())
        nll = sum(t[1] for t in terms.values())
        sample_size = sum(t[2] for t in terms.values())
        logging = {"loss": loss.data, "nll_loss": nll.data, "ntokens": sample_size, "nsentences": bsz,
                   "sample_size": sample_size, "p_g": p_g, "group_rows": int(grouped.sum()),
                   "raw_rows": int(from_raw.sum())}
        for name, (_, term_nll, n) in terms.items():
            logging[f"{name}_nll"], logging[f"{name}_tokens"] = term_nll.data, n
        return loss, sample_size, logging

    @staticmethod
    def reduce_metrics(logging_outputs: List[dict]) -> None:
        total = logged_total(logging_outputs)
        sample_size = total("sample_size")
        log_bits("loss", total("loss"), sample_size)
        log_bits("nll_loss", total("nll_loss"), sample_size)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        for name in TERMS:
            n = total(f"{name}_tokens")
            if n:
                log_bits(f"{name}_nll", total(f"{name}_nll"), n)
        rows = total("nsentences")
        metrics.log_scalar("p_g", total("p_g") / len(logging_outputs), round=3)
        metrics.log_scalar("group_rows", total("group_rows") / rows, rows, round=3)
        metrics.log_scalar("raw_rows", total("raw_rows") / rows, rows, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False  # p_g is averaged over the logs
