"""RDT stage 1: L = λ1·L_XE + λ2·L_bit + λ3·L_rank (Eq. 13; defaults 1, 1, 5).

Per batch of captions (fixed length L, ``RDTModel.fixed_length``):

1. x0 = the analog bits of the caption; t' ~ U(0, 0.999) per caption (the paper's
   training range); x_t = sqrt(σ(−γ(t')))·x0 + sqrt(σ(γ(t')))·ε (Eq. 1), γ cosine by
   default (``--noise-schedule`` of the model);
2. self-conditioning: with probability p (model ``--self-cond-prob``, 0.5) a first
   pass without gradient predicts x̂0, which is fed (detached) to the second pass;
   otherwise zeros;
3. f(x_t, γ(t'), G) → vocabulary logits and x̂0;
   L_bit = mean ||x̂0 − x0||² (Eq. 2), L_XE = label-smoothed cross-entropy of the logits;
4. L_rank (Eq. 24-28) over all pairs (i, j) of the batch: sentence quality = the mean of
   the analog bits (before thresholding), q*_i of x0 and q_{i,t_i} of x̂0;
   L^{ij} = max(0, |q*_i − q*_j| − sign(q*_i − q*_j)·(q_i − q_j)),
   L_rank = 1/n² Σ_ij M_tim^{ij} M_sen^{ij} L^{ij}, M_tim = [|t_i − t_j| ≤ δ_tim],
   M_sen = [|q*_i − q*_j| ≤ δ_sen] (δ_tim 0.12, δ_sen 0.15).

Slots: the losses and the quality scores cover the caption's words and its first </s>
(``--loss-slots sentence``, as the reference's masks) or all L slots (``all``).
Validation draws t' and ε from a fixed seed so validation losses are comparable.  Step 1's
draws, the encoder pass and the cascade condition: ``rdt_common``, shared with stage 2.
Logged: ``loss`` and ``nll_loss`` in bits, as every criterion of the suite; the terms
``xe``, ``bit`` and ``rank`` as they enter Eq. 13.
"""
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from torch import Tensor

from ..errors import OptionError
from .common import label_smoothed_nll, log_bits, logged_total
from .rdt_common import caption_bits, check_rdt_model, noised_inputs

TERMS = ("xe", "bit", "rank")


@dataclass
class RDTLossConfig(FairseqDataclass):
    lambda_xe: float = field(default=1.0, metadata={"help": "λ1 (Eq. 13)"})
    lambda_bit: float = field(default=1.0, metadata={"help": "λ2 (Eq. 13)"})
    lambda_rank: float = field(default=5.0, metadata={"help": "λ3 (Eq. 13); 0 = no ranking loss (Table V base)"})
    delta_tim: float = field(default=0.12, metadata={"help": "δ_tim of the timestep mask (Eq. 27)"})
    delta_sen: float = field(default=0.15, metadata={"help": "δ_sen of the sentence-difference mask (Eq. 28)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "of L_XE"})
    max_time: float = field(default=0.999, metadata={"help": "t' ~ U(0, max_time)"})
    loss_slots: ChoiceEnum(["sentence", "all"]) = field(
        default="sentence", metadata={"help": "sentence: words + first </s>; all: every one of the L slots"})


def sentence_quality(bits: Tensor, slots: Tensor) -> Tensor:
    """Mean of the analog bits over the given slots (B x L x n, B x L) → (B,)."""
    w = slots.unsqueeze(-1).type_as(bits)
    return (bits * w).sum((1, 2)) / (w.sum((1, 2)) * bits.size(-1)).clamp(min=1)


def ranking_loss(q_pred: Tensor, q_star: Tensor, t: Tensor, delta_tim: float, delta_sen: float) -> Tensor:
    """Eq. 24-28: 1/n² Σ_ij M_tim M_sen max(0, |Δq*| − sign(Δq*)·Δq)."""
    n = q_pred.size(0)
    dq_star = q_star[:, None] - q_star[None, :]
    dq = q_pred[:, None] - q_pred[None, :]
    pair = F.relu(dq_star.abs() - torch.sign(dq_star) * dq)  # Eq. 24-25
    m_tim = ((t[:, None] - t[None, :]).abs() <= delta_tim).type_as(pair)  # Eq. 27
    m_sen = (dq_star.abs() <= delta_sen).type_as(pair)  # Eq. 28
    return (m_tim * m_sen * pair).sum() / (n * n)  # Eq. 26


@register_criterion("rdt_loss", dataclass=RDTLossConfig)
class RDTLossCriterion(FairseqCriterion):
    def __init__(self, task, lambda_xe, lambda_bit, lambda_rank, delta_tim, delta_sen, label_smoothing, max_time,
                 loss_slots):
        super().__init__(task)
        self.lambdas = (lambda_xe, lambda_bit, lambda_rank)
        self.delta_tim, self.delta_sen, self.eps = delta_tim, delta_sen, label_smoothing
        if not 0 < max_time <= 1:
            raise OptionError(f"--max-time must be in (0, 1], got {max_time}")
        self.max_time, self.loss_slots = max_time, loss_slots

    def forward(self, model, sample, reduce=True):
        check_rdt_model(model, "rdt_loss")
        target, x0 = caption_bits(model, sample["target"], sample.get("item_ids"))
        bsz = target.size(0)
        t, x_t, gamma, encoder_out, cascade = noised_inputs(model, sample, x0, self.max_time)  # Eq. 1
        self_cond = None
        if model.training and torch.rand(()) < model.cfg.self_cond_prob:
            with torch.no_grad():
                self_cond = model.denoise(x_t, gamma, encoder_out, None, cascade)[1].detach()
        logits, x0_hat = model.denoise(x_t, gamma, encoder_out, self_cond, cascade)

        slots = model.sentence_mask(target) if self.loss_slots == "sentence" else torch.ones_like(target, dtype=torch.bool)
        n_slots = slots.sum()
        # L_bit (Eq. 2): squared error per bit, averaged over the slots' bits
        bit = ((x0_hat.float() - x0) ** 2).mean(-1)[slots].sum() / n_slots
        # L_XE: label-smoothed cross-entropy over the slots, uniform smoothing over the words
        lprobs = F.log_softmax(logits.float(), dim=-1)
        xe_tok, nll = label_smoothed_nll(lprobs, target, self.eps, num_classes=model.word_mask.sum())
        xe = xe_tok[slots].sum() / n_slots
        nll_mean = nll[slots].sum() / n_slots
        # L_rank (Eq. 24-28)
        rank = ranking_loss(sentence_quality(x0_hat.float(), slots), sentence_quality(x0, slots), t,
                            self.delta_tim, self.delta_sen)
        l1, l2, l3 = self.lambdas
        loss = l1 * xe + l2 * bit + l3 * rank  # Eq. 13
        # one unit of sample_size per caption: logged sums / nsentences are the batch means
        logging = {"loss": loss.data * bsz, "nll_loss": nll_mean.data * bsz, "xe": xe.data * bsz,
                   "bit": bit.data * bsz, "rank": rank.data * bsz, "ntokens": int(n_slots),
                   "nsentences": bsz, "sample_size": bsz}
        return loss * bsz, bsz, logging

    @staticmethod
    def reduce_metrics(logging_outputs: List[dict]) -> None:
        total = logged_total(logging_outputs)
        n = total("sample_size")
        if not n:
            return
        log_bits("loss", total("loss"), n, round=4)
        log_bits("nll_loss", total("nll_loss"), n)
        log_bits("xe", total("xe"), n, round=4)  # a cross-entropy: in bits like every loss
        for name in TERMS:
            if name != "xe":  # a squared error and a hinge: as they are
                metrics.log_scalar(name, total(name) / n, n, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

