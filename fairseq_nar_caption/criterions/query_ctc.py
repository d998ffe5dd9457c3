"""Query-CTC (NARVL, Eq. 1): CTC from the N query outputs of ``narvl`` to the target.

    L_QCTC = −log Σ_{a ∈ B⁻¹(y)} Π_{n=1..N} p(a_n | queries, image, prompt)          (Eq. 1)

where B removes blanks and merges repeats.  Computed with ``torch.nn.functional.ctc_loss``
over the dictionary's ``<blank>`` symbol; the target is the caption/answer/box tokens
without ``</s>`` (the generator appends it).  Per sentence, summed over the batch;
``sample_size`` = target tokens of the feasible sentences.

- A target of length L with r adjacent repeats needs L + r positions (a blank between
  equal neighbours).  Longer than N: the alignment set is empty and the loss infinite.
  Such sentences are **not** zeroed silently: they are left out of the loss, counted
  and logged as ``infeasible`` (the task refuses them at load time already:
  ``ctc_min_positions``).
- ``--label-smoothing ε``: (1 − ε)·CTC + ε·mean over queries of the uniform-target
  cross-entropy (−mean_v log p_v), as fairseq's ``nat_loss`` smooths.
- ``--loss ce`` (Table 8 ablation): the first n = L queries are supervised position-wise
  with the target tokens, the remaining N − L with ``<blank>``; decode it with
  ``--generator ctc --ctc-no-merge`` (drop blanks only).
"""
import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from torch import Tensor


@dataclass
class QueryCTCConfig(FairseqDataclass):
    loss: ChoiceEnum(["ctc", "ce"]) = field(
        default="ctc", metadata={"help": "ctc: Query-CTC (Eq. 1); ce: position-wise cross-entropy (Table 8)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "ε of the uniform smoothing term"})


def ctc_min_positions(tokens: List[int]) -> int:
    """Decoder positions a CTC alignment of ``tokens`` needs: L + (adjacent repeats)."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


def strip_targets(target: Tensor, pad: int, eos: int):
    """B x T padded targets (with </s>) → (B x T' targets without </s>, lengths B)."""
    keep = target.ne(pad) & target.ne(eos)
    lengths = keep.sum(1)
    t = max(int(lengths.max()), 1)
    out = target.new_full((target.size(0), t), pad)
    for i in range(target.size(0)):
        out[i, : lengths[i]] = target[i][keep[i]]
    return out, lengths


@register_criterion("query_ctc", dataclass=QueryCTCConfig)
class QueryCTCCriterion(FairseqCriterion):
    def __init__(self, task, loss="ctc", label_smoothing=0.0):
        super().__init__(task)
        d = task.target_dictionary
        if "<blank>" not in d.indices:
            raise ValueError("query_ctc needs a <blank> symbol in the dictionary")
        self.blank, self.pad, self.eos = d.index("<blank>"), d.pad(), d.eos()
        self.loss_type, self.eps = loss, label_smoothing

    def ctc_nll(self, lprobs: Tensor, targets: Tensor, tgt_lengths: Tensor, out_lengths: Tensor) -> Tensor:
        """Per-sentence −log p(y | x) (Eq. 1); inf where no alignment exists.
        lprobs: B x N x V log-probabilities."""
        return F.ctc_loss(lprobs.transpose(0, 1), targets, out_lengths, tgt_lengths, blank=self.blank,
                          reduction="none", zero_infinity=False)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True).float()  # B x N x V
        pad_mask = net_output[1].get("padding_mask")
        bsz, n, _ = lprobs.shape
        out_lengths = (n - pad_mask.sum(1)) if pad_mask is not None else lprobs.new_full((bsz,), n, dtype=torch.long)
        targets, tgt_lengths = strip_targets(sample["target"], self.pad, self.eos)
        if self.loss_type == "ctc":
            nll = self.ctc_nll(lprobs, targets, tgt_lengths, out_lengths)
            feasible = torch.isfinite(nll)
            main = nll.masked_fill(~feasible, 0.0)
        else:  # Table 8: position-wise CE, blanks after the target
            feasible = tgt_lengths <= out_lengths
            ce_target = targets.new_full((bsz, n), self.blank)
            for i in range(bsz):
                L = min(int(tgt_lengths[i]), n)
                ce_target[i, :L] = targets[i, :L]
            nll_tok = -lprobs.gather(-1, ce_target.unsqueeze(-1)).squeeze(-1)  # B x N
            if pad_mask is not None:
                nll_tok = nll_tok.masked_fill(pad_mask, 0.0)
            main = nll_tok.sum(1).masked_fill(~feasible, 0.0)
        if self.eps > 0:
            smooth = -lprobs.mean(-1)  # B x N: cross-entropy to the uniform distribution
            if pad_mask is not None:
                smooth = smooth.masked_fill(pad_mask, 0.0)
            smooth = (smooth.sum(1) / out_lengths.float()).masked_fill(~feasible, 0.0)
            loss_vec = (1 - self.eps) * main + self.eps * smooth * tgt_lengths.float()
        else:
            loss_vec = main
        ntokens = int(tgt_lengths[feasible].sum())
        loss = loss_vec.sum()
        logging_output = {
            "loss": loss.data,
            "nll_loss": main.sum().data,
            "ntokens": ntokens,
            "nsentences": bsz,
            "sample_size": max(ntokens, 1),
            "infeasible": int((~feasible).sum()),
        }
        return loss, max(ntokens, 1), logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = lambda k: sum(log.get(k, 0) for log in logging_outputs)  # noqa: E731
        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / sample_size / math.log(2), sample_size, round=3)
        # infeasible alignments (target needs more than N positions): a count, never hidden
        metrics.log_scalar_sum("infeasible", total("infeasible"))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
