"""NACF's encoder: a highway input embedding layer per modality (Yang et al.,
AAAI 2021, Eq. 1), modalities concatenated along time.

    V' = V·We1,  V̂ = tanh(V'·We2),  G = σ(V'·We3),  f_IEL(V) = BN(G∘V' + (1−G)∘V̂)

As in the paper and the reference code there is no Transformer over the
features by default (``encoder_layers 0``); with layers > 0 a learned position
embedding and fairseq Transformer encoder layers follow.  Output: fairseq's
standard encoder-output dict, like ``FeatureEncoder``.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import FairseqDropout, LayerNorm
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from torch import Tensor

from ...errors import DataError
from .feature_encoder import CaptionEncoderBase


class HighwayEmbedding(nn.Module):
    """Eq. 1 for one modality; BatchNorm over the non-padded vectors of the batch."""

    def __init__(self, input_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, dim)  # We1
        self.transform = nn.Linear(dim, dim)  # We2
        self.gate = nn.Linear(dim, dim)  # We3
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, v: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        v1 = self.proj(v)
        g = torch.sigmoid(self.gate(v1))
        h = g * v1 + (1 - g) * torch.tanh(self.transform(v1))
        if valid is None:
            return self.norm(h.reshape(-1, h.size(-1))).view_as(h)
        out = torch.zeros_like(h)
        out[valid] = self.norm(h[valid])
        return out


class HighwayFeatureEncoder(CaptionEncoderBase):
    def __init__(self, tcfg: TransformerConfig, input_dim: int, tokens_per_modality: Sequence[int]):
        super().__init__(tcfg, tokens_per_modality)
        d = tcfg.encoder.embed_dim
        self.embed = nn.ModuleList([HighwayEmbedding(input_dim, d) for _ in self.tokens_per_modality])
        self.dropout_module = FairseqDropout(tcfg.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList([TransformerEncoderLayerBase(tcfg) for _ in range(tcfg.encoder.layers)])
        if self.layers:
            self.embed_positions = nn.Embedding(tcfg.max_source_positions, d)
            nn.init.normal_(self.embed_positions.weight, std=0.02)
        self.layer_norm = LayerNorm(d) if self.layers and tcfg.encoder.normalize_before else None

    def forward(self, features: Tensor, padding_mask: Optional[Tensor] = None, category: Optional[Tensor] = None,
                **unused) -> Dict[str, List[Tensor]]:
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        if len(self.embed) > 1 and features.size(1) != sum(self.tokens_per_modality):
            raise DataError(f"{features.size(1)} feature vectors, expected {self.tokens_per_modality} per modality")
        bounds = [0]
        for k in self.tokens_per_modality[:-1]:
            bounds.append(bounds[-1] + k)
        bounds.append(features.size(1))
        parts = []
        for m, emb in enumerate(self.embed):
            sl = slice(bounds[m], bounds[m + 1])
            parts.append(emb(features[:, sl], None if padding_mask is None else ~padding_mask[:, sl]))
        x = self.dropout_module(torch.cat(parts, dim=1))  # temporal concatenation of modalities
        if self.layers:
            x = x + self.embed_positions(torch.arange(x.size(1), device=x.device))[None]
        x = x.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=padding_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.encoder_output(x, padding_mask, category)
