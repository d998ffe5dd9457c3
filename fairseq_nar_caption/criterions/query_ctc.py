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
  cross-entropy (−mean_v log p_v, ``common.uniform_ce``) times the target length, as fairseq's
  ``nat_loss`` smooths.
- ``--loss ce`` (Table 8 ablation): the first n = L queries are supervised position-wise
  with the target tokens, the remaining N − L with ``<blank>``; decode it with
  ``--generator ctc --ctc-no-merge`` (drop blanks only).
- ``--glat-ratio λ > 0`` (not in the paper; ``criterions/glancing.py``): glancing training as
  CTC-GLAT does it: a first pass without gradient, the best CTC alignment of the target under
  it (Viterbi), S = round(λ·d) of the frames where the first pass disagrees with the alignment
  counted (GLAT Eq. 6), that many frames chosen at random show their aligned token (a word or
  ``<blank>``) in place of the query, and Eq. 1 is computed on the second pass.  The decoder
  learns to complete a partly given alignment: what ``--ctc-refine-passes`` decoding asks of it.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum
from torch import Tensor

from ..errors import OptionError
from ..models.narvl import ctc_min_positions
from .common import log_bits, logged_total, random_positions, uniform_ce
from .glancing import GlancingConfig, check_glancing, ctc_best_alignment, glance_count, glancing_ratio


@dataclass
class QueryCTCConfig(GlancingConfig):
    loss: ChoiceEnum(["ctc", "ce"]) = field(
        default="ctc", metadata={"help": "ctc: Query-CTC (Eq. 1); ce: position-wise cross-entropy (Table 8)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "ε of the uniform smoothing term"})


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
    def __init__(self, task, loss="ctc", label_smoothing=0.0, glat_ratio=0.0, glat_ratio_final=-1.0,
                 glat_anneal_updates=0):
        super().__init__(task)
        self.glat = GlancingConfig(glat_ratio=glat_ratio, glat_ratio_final=glat_ratio_final,
                                   glat_anneal_updates=glat_anneal_updates)
        check_glancing(self.glat)
        if glat_ratio > 0 and loss != "ctc":
            raise OptionError("--glat-ratio glances at CTC alignments: use it with --loss ctc")
        d = task.target_dictionary
        if "<blank>" not in d.indices:
            raise OptionError("query_ctc needs a <blank> symbol in the dictionary")
        self.blank, self.pad, self.eos = d.index("<blank>"), d.pad(), d.eos()
        self.loss_type, self.eps = loss, label_smoothing

    def ctc_nll(self, lprobs: Tensor, targets: Tensor, tgt_lengths: Tensor, out_lengths: Tensor) -> Tensor:
        """Per-sentence −log p(y | x) (Eq. 1); inf where no alignment exists.
        lprobs: B x N x V log-probabilities."""
        return F.ctc_loss(lprobs.transpose(0, 1), targets, out_lengths, tgt_lengths, blank=self.blank,
                          reduction="none", zero_infinity=False)

    def glancing_pass(self, model, sample, targets, tgt_lengths, ratio: float):
        """GLAT's two passes (module docstring): → (second-pass net output, revealed frames,
        first-pass distance), both counts summed over the batch."""
        encoder_out = model.forward_encoder(sample["net_input"])
        with torch.no_grad():
            first = model.decoder(encoder_out=encoder_out)
            if first[1].get("padding_mask") is not None:
                raise OptionError("--glat-ratio needs learnable queries (--decoder-input query)")
            lp = model.get_normalized_probs(first, log_probs=True).float()
            fits = torch.tensor([ctc_min_positions(t[:n].tolist()) <= lp.size(1)
                                 for t, n in zip(targets, tgt_lengths.tolist())], device=lp.device)
            aligned = ctc_best_alignment(lp, targets, tgt_lengths, self.blank)
            wrong = lp.argmax(-1).ne(aligned) & fits.unsqueeze(1)
            distance = wrong.sum(1)
            reveal = random_positions(fits.unsqueeze(1).expand_as(wrong), glance_count(distance, ratio))  # GLAT Eq. 6
        glance = aligned.masked_fill(~reveal, self.pad)
        return model.decoder(encoder_out=encoder_out, glance_tokens=glance), int(reveal.sum()), int(distance.sum())

    def forward(self, model, sample, reduce=True):
        targets, tgt_lengths = strip_targets(sample["target"], self.pad, self.eos)
        ratio = glancing_ratio(self.glat, getattr(model, "num_updates", 0))
        glat = {}
        if ratio > 0 and model.training:
            net_output, revealed, distance = self.glancing_pass(model, sample, targets, tgt_lengths, ratio)
            glat = {"glat_revealed": revealed, "glat_distance": distance}
        else:
            net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True).float()  # B x N x V
        pad_mask = net_output[1].get("padding_mask")
        bsz, n, _ = lprobs.shape
        out_lengths = (n - pad_mask.sum(1)) if pad_mask is not None else lprobs.new_full((bsz,), n, dtype=torch.long)
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
            smooth = uniform_ce(lprobs)  # B x N: cross-entropy to the uniform distribution
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
            **glat,
        }
        return loss, max(ntokens, 1), logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = logged_total(logging_outputs)
        sample_size = total("sample_size")
        log_bits("loss", total("loss"), sample_size)
        log_bits("nll_loss", total("nll_loss"), sample_size)
        # infeasible alignments (target needs more than N positions): a count, never hidden
        metrics.log_scalar_sum("infeasible", total("infeasible"))
        if any("glat_revealed" in log for log in logging_outputs):  # glancing: frames shown per target token
            metrics.log_scalar("glat_shown", total("glat_revealed") / sample_size, sample_size, round=3)
            metrics.log_scalar("glat_wrong", total("glat_distance") / sample_size, sample_size, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
