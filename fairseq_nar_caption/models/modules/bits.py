"""Analog bits (Chen et al., "Analog Bits"; RDT Section III-A): word ids <-> n = ⌈log2 W⌉
real-valued bits.

    id  → binary digits, most significant first, {0, 1} → {−scale, +scale}
    bits → ids: the nearest *valid* code (largest inner product with a word's code)

Why the decoding is "nearest valid code" and not a threshold: with W words and
n = ⌈log2 W⌉ bits, 2^n − W codes name no word (the reference thresholds at 0 and then
clamps the integer to W−1, so every invalid code silently becomes the last word).  The
inner product with a ±scale code is maximal for the code that agrees in sign on the most
bits, weighted by |bit|, so for a valid thresholded code this *is* thresholding, and an
invalid one goes to the valid word whose code is closest (Euclidean, all codes having
the same norm).  ``allowed`` restricts the candidates further (e.g. never decode <pad>).
``threshold_ids`` gives the raw integer and whether it is a valid id, for callers that
want to see the invalid codes themselves.

The x̂0 prediction of the model (``predict_x0``) is, as in the reference predictor, a
softmax over the vocabulary times the code book: a convex combination of valid word
codes; ``raw`` bits are the other option (the model then regresses the bits directly).
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def num_bits(vocab_size: int) -> int:
    """n = ⌈log2 W⌉ (at least 1)."""
    if vocab_size < 1:
        raise ValueError(f"vocabulary size must be positive, got {vocab_size}")
    return max(1, math.ceil(math.log2(vocab_size)))


def ids_to_bits(ids: Tensor, n_bits: int, scale: float = 1.0) -> Tensor:
    """(...) long → (..., n) float: MSB first, 0 → −scale, 1 → +scale."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 2 ** n_bits):
        raise ValueError(f"ids must be in [0, 2^{n_bits}), got [{int(ids.min())}, {int(ids.max())}]")
    shifts = torch.arange(n_bits - 1, -1, -1, device=ids.device)
    digits = (ids.unsqueeze(-1) >> shifts).bitwise_and(1)
    return (digits.float() * 2 - 1) * scale


def codebook(vocab_size: int, n_bits: int, scale: float = 1.0, device=None) -> Tensor:
    """The code of every word id: W x n."""
    return ids_to_bits(torch.arange(vocab_size, device=device), n_bits, scale)


def threshold_ids(bits: Tensor, vocab_size: int) -> Tuple[Tensor, Tensor]:
    """The integer a code thresholds to (bit > 0 → 1) and whether it names a word (< W)."""
    n = bits.size(-1)
    weights = 2 ** torch.arange(n - 1, -1, -1, device=bits.device)
    ints = (bits > 0).long().mul(weights).sum(-1)
    return ints, ints < vocab_size


def bits_to_ids(bits: Tensor, book: Tensor, allowed: Optional[Tensor] = None) -> Tensor:
    """(..., n) → (...) ids: the allowed word whose code has the largest inner product
    with ``bits`` (= the thresholded id whenever that is a valid, allowed word)."""
    scores = bits.float() @ book.t().float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    return scores.argmax(-1)


def predict_x0(logits: Tensor, book: Tensor) -> Tensor:
    """x̂0 = softmax(logits) · code book: a convex combination of word codes (B x L x n)."""
    return torch.softmax(logits.float(), dim=-1) @ book.float()
