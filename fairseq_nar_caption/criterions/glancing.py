"""Glancing training (GLAT: Qian et al., ACL 2021, "Glancing Transformer for Non-Autoregressive
Neural Machine Translation"), shared by the masked-LM criterion (NACF, ``nacf_loss``) and the
CTC criterion (NARVL, ``query_ctc``).  Not part of the four papers: an option (``--glat-ratio``,
default 0 = the paper-faithful training; its measured effect: docs/results.md).

Per training sentence, GLAT's two passes:

1. a first decoder pass without gradient on the inference-time input (all ``<mask>`` for the
   masked LM, the bare queries for CTC) gives the prediction Ŷ;
2. the distance d(Y, Ŷ) (GLAT Eq. 5: the Hamming distance; for CTC, between Ŷ's frames and the
   best CTC alignment of Y under the current model, as in CTC-GLAT, Gu & Kong 2021) sets the
   number of target tokens revealed to the decoder,

       S = round(λ · d(Y, Ŷ))                                                     (GLAT Eq. 6)

   (``glance_count``; rounding half up: λ = 0.5, d = 3 → 2), chosen uniformly at random among the
   positions (``common.random_positions``); the second pass, with gradient, sees those tokens at
   their positions and is trained on the others (the masked LM) or on the whole CTC objective.

λ may be annealed linearly from ``--glat-ratio`` to ``--glat-ratio-final`` over
``--glat-anneal-updates`` updates (GLAT's 0.5 → 0.3).
"""
from dataclasses import dataclass, field

import torch
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import OptionError


@dataclass
class GlancingConfig(FairseqDataclass):
    glat_ratio: float = field(
        default=0.0, metadata={"help": "glancing training (GLAT, not in the paper): λ of S = λ·d(Y, Ŷ) target "
                                       "tokens revealed to a second pass; 0 = off (the paper's training)"})
    glat_ratio_final: float = field(
        default=-1.0, metadata={"help": "λ at the end of --glat-anneal-updates (linear; < 0 = constant λ)"})
    glat_anneal_updates: int = field(default=0, metadata={"help": "updates over which λ is annealed"})


def check_glancing(cfg) -> None:
    for name in ("glat_ratio", "glat_ratio_final"):
        v = getattr(cfg, name)
        if name == "glat_ratio_final" and v < 0:
            continue
        if not 0 <= v <= 1:
            raise OptionError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
    if cfg.glat_anneal_updates < 0:
        raise OptionError(f"--glat-anneal-updates must be >= 0, got {cfg.glat_anneal_updates}")


def glancing_ratio(cfg, num_updates: int) -> float:
    """λ at ``num_updates`` (linear annealing when --glat-ratio-final >= 0)."""
    if cfg.glat_ratio_final < 0 or cfg.glat_anneal_updates <= 0:
        return cfg.glat_ratio
    frac = min(1.0, num_updates / cfg.glat_anneal_updates)
    return cfg.glat_ratio + frac * (cfg.glat_ratio_final - cfg.glat_ratio)


def glance_count(distance: Tensor, ratio: float) -> Tensor:
    """S = round(λ · d) per sentence (GLAT Eq. 6), rounding half up."""
    return torch.floor(distance.float() * ratio + 0.5).long()


def ctc_best_alignment(lprobs: Tensor, targets: Tensor, tgt_lengths: Tensor, blank: int) -> Tensor:
    """The most probable CTC alignment (Viterbi) of each target onto the N frames.

    lprobs: B x N x V log-probabilities; targets: B x L (padded beyond ``tgt_lengths``).
    Returns B x N frame tokens (targets and ``<blank>``) whose CTC collapse is the target.
    Every target must fit (L + adjacent repeats <= N; the task refuses others at load time)."""
    bsz, n, _ = lprobs.shape
    L = targets.size(1)
    S = 2 * L + 1  # extended labels: blank y1 blank y2 ... yL blank
    ext = targets.new_full((bsz, S), blank)
    ext[:, 1::2] = targets
    s_idx = torch.arange(S, device=lprobs.device)
    valid = s_idx.unsqueeze(0) < (2 * tgt_lengths + 1).unsqueeze(1)  # B x S
    ext = ext.masked_fill(~valid, blank)
    lp = lprobs.gather(2, ext.unsqueeze(1).expand(bsz, n, S)).masked_fill(~valid.unsqueeze(1), -float("inf"))
    skip = torch.zeros_like(valid)  # s-2 → s allowed: a label different from the one two back
    skip[:, 2:] = ext[:, 2:].ne(blank) & ext[:, 2:].ne(ext[:, :-2])
    neg = -float("inf")
    alpha = lp.new_full((bsz, S), neg)
    alpha[:, 0] = lp[:, 0, 0]
    if S > 1:
        alpha[:, 1] = lp[:, 0, 1]
    back = torch.zeros(bsz, n, S, dtype=torch.long, device=lprobs.device)
    for t in range(1, n):
        stay = alpha
        one = torch.cat([alpha.new_full((bsz, 1), neg), alpha[:, :-1]], 1)
        two = torch.cat([alpha.new_full((bsz, 2), neg), alpha[:, :-2]], 1).masked_fill(~skip, neg)
        best, arg = torch.stack([stay, one, two], -1).max(-1)
        back[:, t] = arg
        alpha = best + lp[:, t]
    end = 2 * tgt_lengths  # the last blank or the last label
    rows = torch.arange(bsz, device=lprobs.device)
    last_blank, last_label = alpha[rows, end], alpha[rows, (end - 1).clamp(min=0)]
    s = torch.where((last_label > last_blank) & (tgt_lengths > 0), end - 1, end)
    path = torch.empty(bsz, n, dtype=torch.long, device=lprobs.device)
    for t in range(n - 1, -1, -1):
        path[:, t] = ext[rows, s]
        s = s - back[rows, t, s]
    return path
