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
Validation draws t' and ε from a fixed seed so validation losses are comparable.
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

from ..errors import OptionError
from ..models.rdt import forward_noise

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


def logged_total(logging_outputs: List[dict]):
    """key -> sum over the workers' logging outputs (both RDT criteria)."""
    return lambda key: sum(float(log.get(key, 0)) for log in logging_outputs)


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

    def draw(self, model, shape_t, x0: Tensor):
        """t' ~ U(0, max_time) and ε; fixed seed in evaluation mode."""
        if model.training:
            return torch.rand(shape_t, device=x0.device) * self.max_time, torch.randn_like(x0)
        g = torch.Generator().manual_seed(0)
        t = torch.rand(shape_t, generator=g) * self.max_time
        return t.to(x0.device), torch.randn(x0.shape, generator=g).to(x0)

    def forward(self, model, sample, reduce=True):
        if not hasattr(model, "denoise"):
            raise OptionError(f"--criterion rdt_loss trains RDT (--arch rdt*), got {type(model).__name__}")
        target = model.fixed_length(sample["target"], sample.get("item_ids"))
        bsz = target.size(0)
        x0 = model.to_bits(target)
        t, noise = self.draw(model, (bsz,), x0)
        x_t, gamma = forward_noise(x0, t, model.noise_schedule, noise)  # Eq. 1
        if model.cfg.cascaded and "cascade_tokens" not in sample:
            raise OptionError("a --cascaded model trains on a first model's captions: set the task's "
                             "--cascade-manifests (one caption per item of every split it reads)")
        encoder_out = model.forward_encoder(sample["net_input"])
        cascade = model.to_bits(model.fixed_length(sample["cascade_tokens"], sample.get("item_ids"), "first-stage "
                                                   "caption")) if model.cfg.cascaded else None
        self_cond = None
        if model.training and torch.rand(()) < model.cfg.self_cond_prob:
            with torch.no_grad():
                self_cond = model.denoise(x_t, gamma, encoder_out, None, cascade)[1].detach()
        logits, x0_hat = model.denoise(x_t, gamma, encoder_out, self_cond, cascade)

        slots = model.sentence_mask(target) if self.loss_slots == "sentence" else torch.ones_like(target, dtype=torch.bool)
        n_slots = slots.sum()
        # L_bit (Eq. 2): squared error per bit, averaged over the slots' bits
        bit = ((x0_hat.float() - x0) ** 2).mean(-1)[slots].sum() / n_slots
        # L_XE: label-smoothed cross-entropy over the slots
        lprobs = F.log_softmax(logits.float(), dim=-1)
        nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        smooth = -lprobs.masked_fill(torch.isinf(lprobs), 0).sum(-1) / model.word_mask.sum()
        xe_tok = (1 - self.eps) * nll + self.eps * smooth
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
        metrics.log_scalar("loss", total("loss") / n, n, round=4)
        metrics.log_scalar("nll_loss", total("nll_loss") / n / math.log(2), n, round=3)
        for name in TERMS:
            metrics.log_scalar(name, total(name) / n, n, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


from . import rdt_scst  # noqa: E402,F401  (stage 2, guided SCST: registered with stage 1)
