"""Multi-head ranking attention (MHRA) and the Ranking Visual Encoder layer (RDT, Wan
et al., Section III-C, Eq. 8-12 and 15-23).

Per head, with A = Q Kᵀ/√d (Eq. 15-16, the grid-to-grid affinity; padded keys −∞):

- R = topK(A) with K = N: for EVERY query its own ranking of the keys (Eq. 16);
- forward set R_F = R[:, :⌊λ_F·N⌋] (Eq. 17), inverse set R_E = R[:, ⌊(1−λ_E)·N⌋:N] (Eq. 20),
  with N the item's own number of keys (its feature vectors without padding), so an item's
  sets, and its output, do not depend on how far its batch is padded;
- K_F, V_F = gather(K, R_F), gather(V, R_F) (Eq. 18, 21): the scores Q·K_Fᵀ are exactly
  A at R_F, so the softmax runs over A with the keys outside the set at −∞ (a boolean
  N x N set per query) and the weights multiply V: the same sum Σ_j w_j·V_F[j] as
  Eq. 19 / 22 without materialising a per-query copy of V (N x λN x d per head);
- O_F, O_E: separate softmax attention (Eq. 19, 22); heads concatenated (Eq. 10-11);
- MHRA = MLP(Concat(O_F, O_E)) (Eq. 23): here one linear layer, 2C → C (C → C when
  the inverse set is empty), i.e. W^O of Eq. 10 over both branches.

λ_F = 1, λ_E = 0 keeps every key and no inverse set: MHRA is then ordinary multi-head
attention (same projections, softmax, W^O), which the tests check against PyTorch's.

The public reference code ranks the keys of query position 0 only and
shares that ranking with every query, with hard-coded ratios and a 0.2 weight on the
inverse branch; this module implements the paper's per-query ranking with configurable
λ_F, λ_E instead (the reference's variant is not offered).

``RankingEncoderLayer`` is one RVE (Eq. 8-9, post-LayerNorm as written):
G' = FFN(LN(G + MHRA(G, G, G))), FFN(Z) = LN(Z + FC(δ(FC(Z)))).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...errors import OptionError


def ranked_set_sizes(n, lambda_f: float, lambda_e: float):
    """(number of forward keys ⌊λ_F·N⌋ (at least 1), first rank of the inverse set
    ⌊(1−λ_E)·N⌋) as long tensors, for N = ``n``: an int or a tensor of per-item key counts
    (computed in float32); a small tolerance keeps e.g. 0.75·64 = 48 exact."""
    n = torch.as_tensor(n, dtype=torch.float32)
    n_f = torch.minimum(torch.floor(lambda_f * n + 1e-6).clamp(min=1), n)
    start_e = torch.minimum(torch.floor((1 - lambda_e) * n + 1e-6).clamp(min=0), n)
    return n_f.long(), start_e.long()


def ranked_attention(scores: Tensor, v: Tensor, keys: Tensor, dropout_p: float = 0.0,
                     training: bool = False) -> Tensor:
    """Attention of every query over its own set of keys (Eq. 18-19 / 21-22).

    scores: ... x Nq x Nk (A, scaled; −∞ at padded keys); v: ... x Nk x d;
    keys: ... x Nq x Nk, True = the key is in the query's set.  A query whose set is
    empty gets zeros."""
    picked = scores.masked_fill(~keys, -math.inf)  # = Q·K_Fᵀ with K_F = gather(K, R)
    weights = torch.softmax(picked, dim=-1)
    weights = weights.masked_fill(~keys.any(-1, keepdim=True), 0.0)
    weights = F.dropout(weights, p=dropout_p, training=training)
    return weights @ v


class MultiheadRankingAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, lambda_f: float = 0.75, lambda_e: float = 0.55,
                 dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise OptionError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        if not 0 < lambda_f <= 1 or not 0 <= lambda_e <= 1:
            raise OptionError(f"need 0 < λ_F <= 1 and 0 <= λ_E <= 1, got λ_F={lambda_f}, λ_E={lambda_e}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.lambda_f, self.lambda_e, self.dropout = lambda_f, lambda_e, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)  # W^q, W^k, W^v (Eq. 15)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.has_inverse = lambda_e > 0
        # Eq. 23: MLP(Concat(O_F, O_E)); without an inverse set this is W^O of Eq. 10
        self.out_proj = nn.Linear(embed_dim * (2 if self.has_inverse else 1), embed_dim)

    def _heads(self, x: Tensor) -> Tensor:  # B x N x C → B x H x N x d
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def ranked_sets(self, scores: Tensor, n_keys: Tensor):
        """Per query, its ranking of the keys (Eq. 16) and the forward / inverse sets (Eq. 17, 20)
        as boolean masks over the keys, sized by each item's key count ``n_keys`` (B); the inverse
        set is None without one (λ_E = 0)."""
        n = scores.size(-1)
        ranking = scores.detach().topk(n, dim=-1, sorted=True).indices  # descending relevance, padding last
        rank = torch.empty_like(ranking).scatter_(-1, ranking, torch.arange(n, device=scores.device).expand_as(ranking))
        per_item = [1] * (scores.dim() - 1)
        n_f, start_e = (t.view(-1, *per_item) for t in ranked_set_sizes(n_keys, self.lambda_f, self.lambda_e))
        forward = rank < n_f
        if not self.has_inverse:
            return forward, None
        return forward, (rank >= start_e) & (rank < n_keys.view(-1, *per_item))  # empty where ⌊(1−λ_E)N⌋ = N

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: B x N x C (batch first); key_padding_mask: B x N, True = pad."""
        b, n, c = x.shape
        q = self._heads(self.q_proj(x)) * self.head_dim ** -0.5
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        scores = q @ k.transpose(-1, -2)  # A (Eq. 16), scaled as in Eq. 19
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], -math.inf)  # padded keys rank last
            n_keys = (~key_padding_mask).sum(1)
        else:
            n_keys = torch.full((b,), n, device=x.device)
        set_f, set_e = self.ranked_sets(scores, n_keys)
        p = self.dropout if self.training else 0.0
        outs = [ranked_attention(scores, v, set_f, p, self.training)]  # O_F (Eq. 19)
        if set_e is not None:  # an empty inverse set (⌊(1−λ_E)N⌋ = N) contributes zeros
            outs.append(ranked_attention(scores, v, set_e, p, self.training))  # O_E (Eq. 22)
        merged = torch.cat([o.transpose(1, 2).reshape(b, n, c) for o in outs], dim=-1)  # heads, then branches
        return self.out_proj(merged)  # Eq. 10 / 23


class RankingEncoderLayer(nn.Module):
    """One Ranking Visual Encoder (Eq. 8-9)."""

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, lambda_f: float, lambda_e: float,
                 dropout: float = 0.1, attention_dropout: float = 0.1):
        super().__init__()
        self.attn = MultiheadRankingAttention(embed_dim, num_heads, lambda_f, lambda_e, attention_dropout)
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.fc1, self.fc2 = nn.Linear(embed_dim, ffn_dim), nn.Linear(ffn_dim, embed_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        z = self.attn_norm(x + self.dropout(self.attn(x, key_padding_mask)))  # LN(G + MHRA(G, G, G)), Eq. 8
        return self.ffn_norm(z + self.dropout(self.fc2(self.dropout(F.relu(self.fc1(z))))))  # Eq. 9
