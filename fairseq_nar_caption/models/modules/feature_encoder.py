"""The encoder every caption model shares by default: features → Transformer.

    features (B x N x D_in) → Linear → LayerNorm → + learned position (token index)
    + modality embedding → dropout → L Transformer encoder layers

``forward(features, padding_mask)`` returns fairseq's standard encoder-output
dict (``encoder_out``: [N x B x C], ``encoder_padding_mask``: [B x N]), so any
fairseq decoder, fairseq's ``SequenceGenerator`` and every generator of this
package consume it unchanged.  Models expose it as ``model.forward_encoder(net_input)``.
``highway_encoder.HighwayFeatureEncoder`` (NACF, Eq. 1) is the other encoder type.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from fairseq.models import FairseqEncoder
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import FairseqDropout, LayerNorm
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from torch import Tensor

from ...errors import DataError


def modality_ids(tokens_per_modality: Sequence[int], n: int, device) -> Tensor:
    """Token index → modality index, for features concatenated along time."""
    ids = torch.cat([torch.full((k,), m, dtype=torch.long) for m, k in enumerate(tokens_per_modality)])
    if ids.numel() < n:  # variable-length single-modality features (e.g. regions)
        ids = torch.cat([ids, ids.new_full((n - ids.numel(),), len(tokens_per_modality) - 1)])
    return ids[:n].to(device)


class CaptionEncoderBase(FairseqEncoder):
    """What every caption encoder shares: the output dict, beam reordering, limits."""

    def __init__(self, tcfg: TransformerConfig, tokens_per_modality: Sequence[int]):
        super().__init__(dictionary=None)
        self.tokens_per_modality = list(tokens_per_modality)
        self.max_source_positions = tcfg.max_source_positions

    @staticmethod
    def encoder_output(x: Tensor, padding_mask: Optional[Tensor],
                       category: Optional[Tensor] = None) -> Dict[str, List[Tensor]]:
        """x: N x B x C → fairseq's standard encoder-output dict (plus the item's
        category, B, when the data has one: NACF's decoder embeds it)."""
        return {
            "encoder_out": [x],
            "encoder_padding_mask": [padding_mask] if padding_mask is not None else [],
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
            "category": [category] if category is not None else [],
        }

    @torch.jit.export
    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """Select/repeat batch rows (beams, length candidates): time-major
        ``encoder_out`` along dim 1, every other tensor along dim 0."""
        return {k: [t.index_select(1 if k == "encoder_out" else 0, new_order) for t in v]
                for k, v in encoder_out.items()}

    def max_positions(self):
        return self.max_source_positions


class FeatureEncoder(CaptionEncoderBase):
    def __init__(self, tcfg: TransformerConfig, input_dim: int, tokens_per_modality: Sequence[int]):
        super().__init__(tcfg, tokens_per_modality)
        d = tcfg.encoder.embed_dim
        self.input_proj = nn.Linear(input_dim, d)
        self.input_norm = LayerNorm(d)
        self.embed_positions = nn.Embedding(tcfg.max_source_positions, d)
        self.embed_modality = nn.Embedding(len(self.tokens_per_modality), d)
        nn.init.normal_(self.embed_positions.weight, std=0.02)
        nn.init.normal_(self.embed_modality.weight, std=0.02)
        self.dropout_module = FairseqDropout(tcfg.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList([TransformerEncoderLayerBase(tcfg) for _ in range(tcfg.encoder.layers)])
        self.layer_norm = LayerNorm(d) if tcfg.encoder.normalize_before else None

    def forward(self, features: Tensor, padding_mask: Optional[Tensor] = None, category: Optional[Tensor] = None,
                **unused) -> Dict[str, List[Tensor]]:
        bsz, n, _ = features.shape
        if n > self.max_source_positions:
            raise DataError(f"{n} feature vectors exceed --max-source-positions {self.max_source_positions}")
        x = self.input_norm(self.input_proj(features))
        pos = torch.arange(n, device=features.device)
        x = x + self.embed_positions(pos)[None] + self.embed_modality(
            modality_ids(self.tokens_per_modality, n, features.device))[None]
        x = self.dropout_module(x)
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        if padding_mask is not None:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)  # N x B x C
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=padding_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.encoder_output(x, padding_mask, category)
