"""Self-attention with relative position representations (Shaw et al., NAACL 2018),
as SAIC's decoders use it (Fei et al., Eq. 6-8):

    e_ij = q_i · (k_j + a^K_{r(i,j)}) / sqrt(d_k)                       (Eq. 6, logits)
    o_i  = Σ_j softmax_j(e_ij) · (v_j + a^V_{r(i,j)})                    (Eq. 6, values)
    r(i,j) = clip(p_j − p_i) = max(−w, min(w, p_j − p_i))                (Eq. 7-8)

p_i, p_j are the absolute positions of query i and key j, w the clip window, and
a^K, a^V two tables of 2w+1 vectors of the head dimension shared by all heads of
a layer (Shaw et al.'s key and value representations; the paper's Eq. 6 writes one
R_i for both).  Eq. 8 in the paper reads ``max(w, min(w, j − i))``; the lower bound
is −w (Shaw et al., Eq. 5-6).

``RelativePositionMultiheadAttention`` extends fairseq's ``MultiheadAttention``:
the projections keep fairseq's names (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``), so a plain Transformer checkpoint initialises it; the tables
``rel_keys`` / ``rel_values`` are new parameters, initialised to zero, so the layer
computes exactly the plain attention of those weights until training moves them.
``window=0`` creates no tables: plain attention (SAIC Table 7 "−RPR").

Incremental decoding caches keys and values in fairseq's per-module incremental
state (beam search reorders them as usual) and, separately, the absolute positions
of the cached keys, which are the same for every row of the batch (all rows decode
in lock-step), so beam reordering leaves them alone.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor

from ...errors import OptionError

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


def relative_position_buckets(query_positions: Tensor, key_positions: Tensor, window: int) -> Tensor:
    """(tgt, src) indices into the 2w+1 relative embeddings: clip(p_j − p_i) + w (Eq. 7-8)."""
    rel = key_positions[None, :] - query_positions[:, None]
    return rel.clamp(-window, window) + window


class RelativePositionMultiheadAttention(MultiheadAttention):
    """Multi-head self-attention with relative position representations clipped at ``window``."""

    def __init__(self, embed_dim: int, num_heads: int, window: int, dropout: float = 0.0, bias: bool = True):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, self_attention=True)
        if window < 0:
            raise OptionError(f"relative position window must be >= 0, got {window}")
        self.window = window
        if window > 0:
            self.rel_keys = nn.Embedding(2 * window + 1, self.head_dim)
            self.rel_values = nn.Embedding(2 * window + 1, self.head_dim)
            nn.init.zeros_(self.rel_keys.weight)
            nn.init.zeros_(self.rel_values.weight)

    def _cached_positions(self, incremental_state: IncrementalState) -> Optional[Tensor]:
        state = self.get_incremental_state(incremental_state, "rpr_positions")
        return None if state is None else state["positions"]

    def forward(
        self,
        query: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        attn_mask: Optional[Tensor] = None,
        positions: Optional[Tensor] = None,
        need_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Self-attention of ``query`` (T x B x C) over itself and the cached keys.

        - ``positions`` (T,): absolute positions of the T queries (also the positions
          of the keys they add).  Default: 0..T−1, or, when decoding incrementally,
          continuing after the last cached key.
        - ``attn_mask`` (T x S): additive float mask (−inf = blocked) or boolean mask
          (True = blocked), S = cached + new keys.
        - ``key_padding_mask`` (B x T): True at padded positions of the new keys.

        Returns (output T x B x C, attention weights B x T x S averaged over heads
        if ``need_weights``, else None).
        """
        tgt_len, bsz, _ = query.shape
        h, hd = self.num_heads, self.head_dim

        def heads(x: Tensor) -> Tensor:  # T x B x C -> B x H x T x hd
            return x.view(-1, bsz, h, hd).permute(1, 2, 0, 3)

        q = heads(self.q_proj(query) * self.scaling)
        k, v = heads(self.k_proj(query)), heads(self.v_proj(query))

        key_positions = None
        if incremental_state is not None:
            saved = self._get_input_buffer(incremental_state)
            cached_positions = self._cached_positions(incremental_state)
            if positions is None:
                start = 0 if cached_positions is None else int(cached_positions[-1]) + 1
                positions = torch.arange(start, start + tgt_len, device=query.device)
            if "prev_key" in saved:
                k = torch.cat([saved["prev_key"], k], dim=2)
                v = torch.cat([saved["prev_value"], v], dim=2)
                key_positions = torch.cat([cached_positions, positions])
            key_padding_mask = MultiheadAttention._append_prev_key_padding_mask(
                key_padding_mask=key_padding_mask, prev_key_padding_mask=saved.get("prev_key_padding_mask"),
                batch_size=bsz, src_len=k.size(2), static_kv=False)
            saved.update(prev_key=k, prev_value=v, prev_key_padding_mask=key_padding_mask)
            self._set_input_buffer(incremental_state, saved)
        if positions is None:
            positions = torch.arange(tgt_len, device=query.device)
        if key_positions is None:
            key_positions = positions
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "rpr_positions", {"positions": key_positions})

        logits = torch.matmul(q, k.transpose(2, 3))  # B x H x T x S
        buckets = None
        if self.window > 0:
            buckets = relative_position_buckets(positions, key_positions, self.window).expand(bsz, h, -1, -1)
            q_rel = torch.matmul(q, self.rel_keys.weight.t())  # B x H x T x (2w+1): q_i · a^K_r
            logits = logits + q_rel.gather(-1, buckets)  # Eq. 6, keys
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(attn_mask, float("-inf"))
            else:
                logits = logits + attn_mask
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
        weights = F.softmax(logits.float(), dim=-1).type_as(logits)
        probs = self.dropout_module(weights)
        out = torch.matmul(probs, v)  # B x H x T x hd
        if buckets is not None:
            # Σ_j α_ij a^V_{r(i,j)}: sum the weights per relative-position bucket, then mix the table
            per_bucket = probs.new_zeros(bsz, h, tgt_len, 2 * self.window + 1).scatter_add_(-1, buckets, probs)
            out = out + torch.matmul(per_bucket, self.rel_values.weight)  # Eq. 6, values
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, h * hd))
        return out, (weights.mean(dim=1) if need_weights else None)
