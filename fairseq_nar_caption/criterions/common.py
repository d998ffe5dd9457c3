"""What the criteria share: the label-smoothed NLL, the random choice of positions (NACF's
masking, glancing, SAIC's NAIC samples) and the logging of summed values, every loss in bits.

Label smoothing.  Per position, with p the model's distribution and y the target,

    nll     = −log p_y
    uniform = −(1/K) Σ_{v∈S} log p_v      (the cross-entropy to the uniform distribution on S)

and the smoothed loss puts the mass ε on the smoothing distribution:

- ``spread="all"``: (1 − ε)·nll + ε·uniform, S = every class (K = V; NACF, NARVL's CE ablation)
  or, with ``num_classes=K``, the K classes of finite log-probability (RDT: the word vocabulary,
  the other logits are −inf);
- ``spread="others"``: ε/(V − 1) on each class but the target, as fairseq's
  ``label_smoothed_nll_loss`` (SAIC's four losses):
  (1 − ε − ε/(V−1))·nll + ε/(V−1)·Σ_v (−log p_v).

Query-CTC's smoothing, (1 − ε)·CTC + ε·uniform per sentence (``query_ctc``), takes its uniform
term from ``uniform_ce``: the CTC likelihood has no per-position target to gather.

Logging.  Every loss is logged in bits (the sum over the logging outputs, divided by its weight
and by ln 2), as fairseq's own criteria do; counts and fractions are logged as they are.
"""
import math
from typing import Callable, List, Optional, Tuple

import torch
from fairseq import metrics
from torch import Tensor

LN2 = math.log(2)


# ----------------------------------------------------------------------------- label smoothing

def uniform_ce(lprobs: Tensor, num_classes=None) -> Tensor:
    """−(1/K) Σ_{v∈S} log p_v per position (... x V → ...): the cross-entropy to the uniform
    distribution on S.  ``num_classes`` None: S = all V classes; K (a number or a 0-dim tensor):
    S = the classes whose log-probability is finite, K of them."""
    if num_classes is None:
        return -lprobs.mean(-1)
    return -lprobs.masked_fill(torch.isinf(lprobs), 0).sum(-1) / num_classes


def label_smoothed_nll(lprobs: Tensor, target: Tensor, eps: float, ignore: Optional[Tensor] = None,
                       reduce: bool = False, spread: str = "all", num_classes=None) -> Tuple[Tensor, Tensor]:
    """The label-smoothed NLL of ``target`` (class indices, the shape of ``lprobs`` without its
    last dimension) under ``lprobs`` (log-probabilities, ... x V); module docstring for ``spread``
    and ``num_classes``.  ``ignore``: a bool mask of the positions that count 0 (padding).
    ``reduce``: sum over the positions (the two terms summed first, then mixed, as fairseq does).
    ε = 0 gives the NLL itself.  Returns (loss, nll), per position or summed."""
    if spread not in ("all", "others"):
        raise ValueError(f"spread must be 'all' or 'others', got {spread!r}")
    if spread == "others" and num_classes is not None:
        raise ValueError("spread='others' smooths over all V − 1 other classes: no num_classes")
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if ignore is not None:
        nll = nll.masked_fill(ignore, 0.0)
    if reduce:
        nll = nll.sum()
    if eps <= 0:
        return nll, nll
    smooth = -lprobs.sum(-1) if spread == "others" else uniform_ce(lprobs, num_classes)
    if ignore is not None:
        smooth = smooth.masked_fill(ignore, 0.0)
    if reduce:
        smooth = smooth.sum()
    if spread == "others":
        eps_i = eps / (lprobs.size(-1) - 1)
        return (1.0 - eps - eps_i) * nll + eps_i * smooth, nll
    return (1 - eps) * nll + eps * smooth, nll


# ----------------------------------------------------------------------------- random positions

def random_positions(candidates: Tensor, count: Tensor) -> Tensor:
    """Choose ``count[b]`` positions uniformly at random among the True ones of ``candidates[b]``
    (B x N bool; ``count`` B, at most the row's candidates): one uniform score per position,
    the candidates' ``count`` lowest win.  Draws one ``torch.rand(B, N)``.  Returns a B x N bool mask."""
    scores = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, 2.0)
    ranks = scores.argsort(1).argsort(1)
    return (ranks < count.unsqueeze(1)) & candidates


def random_mask(words: Tensor, lengths: Tensor, low: float, high: float, pad: int) -> Tensor:
    """NACF Eq. 4-5 masking: per row n ~ U{max(1,⌊L·β_l⌋) .. max(1,⌊L·β_h⌋)} of its non-pad
    positions (L = ``lengths``), chosen by ``random_positions``; (β_l, β_h) = (0, 1) draws 1..L
    masks uniformly, as CMLM.  Returns a bool mask (True = masked)."""
    lo = torch.clamp((lengths.float() * low).floor(), min=1)
    hi = torch.clamp((lengths.float() * high).floor(), min=1)
    n = (lo + torch.rand_like(lo) * (hi - lo + 1)).floor().clamp(max=hi).long()
    return random_positions(words.ne(pad), n)


# ----------------------------------------------------------------------------- logging

def logged_total(logging_outputs: List[dict]) -> Callable[[str], float]:
    """key → the sum of its values over the logging outputs (0 where absent), as a float."""
    return lambda key: sum(float(log.get(key, 0)) for log in logging_outputs)


def log_bits(key: str, total: float, weight, round: int = 3) -> None:
    """Log the loss ``total / weight`` in bits (÷ ln 2), averaged over steps with ``weight``."""
    metrics.log_scalar(key, total / weight / LN2, weight, round=round)
