"""NACF: non-autoregressive coarse-to-fine video captioning (Yang et al., AAAI 2021).

- encoder: per-modality highway input embedding + BN, modalities concatenated
  along time (Eq. 1; ``modules/highway_encoder.py``), shared with AR-B (arch
  ``nacf_arb`` of ``ar_caption``);
- length predictor over the mean-pooled encoder output (Eq. 2);
- a bidirectional Transformer decoder (no causal mask) whose input embeddings are
  enhanced with copied source information (the mean of the encoder outputs, the
  reference code's default ``enhance_input=2``) and, optionally, an MSR-VTT
  category embedding.

The decoder reuses fairseq's module names (``embed_tokens``, ``embed_positions``,
``layers.N`` = ``TransformerDecoderLayerBase``, ``layer_norm``,
``output_projection``) so ``--init-from-ar`` can load a trained AR-B checkpoint.
The NAR target is the caption's words without </s>; its length N is predicted as
a class in [0, max_target_positions).  Training: ``criterions/nacf_loss.py``;
decoding: ``generators/mask_predict.py``.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import FairseqDecoder, register_model
from fairseq.modules import FairseqDropout, LayerNorm, PositionalEmbedding
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

from .ar_caption import (CaptionEncoderDecoderModel, CaptionModelConfig, build_encoder,
                         build_output_projection, load_ar_weights, transformer_config)

logger = logging.getLogger(__name__)


@dataclass
class NACFConfig(CaptionModelConfig):
    # paper settings: highway encoder with no Transformer, one decoder layer, dropout 0.5
    encoder_type: ChoiceEnum(["transformer", "highway"]) = field(default="highway")
    encoder_layers: int = field(default=0, metadata={"help": "Transformer layers over the features"})
    decoder_layers: int = field(default=1, metadata={"help": "decoder layers"})
    dropout: float = field(default=0.5, metadata={"help": "dropout"})
    enhance_input: ChoiceEnum(["mean", "none"]) = field(
        default="mean", metadata={"help": "copied source information added to decoder inputs: the mean of "
                                          "the encoder outputs (reference enhance_input=2), or none"})
    num_categories: int = field(default=0, metadata={"help": "category embedding size (MSR-VTT: 20); 0 = none"})
    init_from_ar: Optional[str] = field(
        default=None, metadata={"help": "AR-B checkpoint (ar_caption, same sizes) to initialise from"})
    scale_positions: bool = field(
        default=False, metadata={"help": "multiply the learned position embeddings by sqrt(d) like the token "
                                         "embeddings (off: fairseq's AR convention, where positions are ~12x "
                                         "weaker than tokens and an all-<mask> input barely tells positions apart)"})


def masked_mean(encoder_out: Dict[str, List[Tensor]]) -> Tensor:
    """Mean over the non-padded encoder outputs: B x C."""
    x = encoder_out["encoder_out"][0]  # N x B x C
    if not encoder_out["encoder_padding_mask"]:
        return x.mean(0)
    keep = (~encoder_out["encoder_padding_mask"][0]).t().unsqueeze(-1).type_as(x)
    return (x * keep).sum(0) / keep.sum(0).clamp(min=1)


class NACFDecoder(FairseqDecoder):
    """Bidirectional decoder: every position attends to every non-pad position."""

    def __init__(self, cfg: NACFConfig, tcfg, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        d = cfg.embed_dim
        self.padding_idx = dictionary.pad()
        self.max_target_positions = cfg.max_target_positions
        self.embed_tokens = embed_tokens
        self.embed_scale = d ** 0.5
        self.embed_positions = PositionalEmbedding(cfg.max_target_positions, d, self.padding_idx, learned=True)
        self.position_scale = self.embed_scale if cfg.scale_positions else 1.0
        self.embed_category = nn.Embedding(cfg.num_categories, d) if cfg.num_categories else None
        self.enhance_input = cfg.enhance_input
        self.layernorm_embedding = LayerNorm(d)
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList([TransformerDecoderLayerBase(tcfg) for _ in range(cfg.decoder_layers)])
        self.layer_norm = LayerNorm(d) if cfg.normalize_before else None
        self.output_projection = build_output_projection(cfg, embed_tokens)

    def forward(self, tokens: Tensor, encoder_out: Dict[str, List[Tensor]], **unused) -> Tensor:
        """tokens: B x N (words, <mask>, <vis>, <pad>) → logits B x N x V (Eq. 4, 7)."""
        pad_mask = tokens.eq(self.padding_idx)
        # an all-<mask> (or all-<vis>) input differs between positions only by the position embedding:
        # --scale-positions gives it the tokens' scale (a trained AR model's learned positions have
        # ~1/12 of the scaled token norm; a causal mask tells an AR decoder positions anyway)
        x = self.embed_scale * self.embed_tokens(tokens) + self.position_scale * self.embed_positions(tokens)
        if self.enhance_input == "mean":
            x = x + masked_mean(encoder_out).unsqueeze(1)
        if self.embed_category is not None:
            if not encoder_out.get("category"):
                raise ValueError("the model has a category embedding but the data gives no category column")
            x = x + self.embed_category(encoder_out["category"][0]).unsqueeze(1)
        x = self.dropout_module(self.layernorm_embedding(x)).transpose(0, 1)
        enc = encoder_out["encoder_out"][0]
        enc_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        for layer in self.layers:
            x, _, _ = layer(x, enc, enc_mask, self_attn_mask=None,
                            self_attn_padding_mask=pad_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.output_projection(x.transpose(0, 1))

    def max_positions(self):
        return self.max_target_positions


class LengthPredictor(nn.Module):
    """L = Softmax(ReLU(MP(R)·Wl1)·Wl2) over lengths 0..N_max-1 (Eq. 2); returns log L."""

    def __init__(self, dim: int, max_len: int, dropout: float):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)  # Wl1
        self.out = nn.Linear(dim, max_len)  # Wl2
        self.dropout = nn.Dropout(dropout)

    def forward(self, encoder_out) -> Tensor:
        return F.log_softmax(self.out(self.dropout(F.relu(self.hidden(masked_mean(encoder_out))))), dim=-1)


@register_model("nacf", dataclass=NACFConfig)
class NACFModel(CaptionEncoderDecoderModel):

    def __init__(self, cfg: NACFConfig, encoder, decoder, length_predictor, dictionary):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.length_predictor = length_predictor
        self.mask_idx = dictionary.index("<mask>")
        self.vis_idx = dictionary.index("<vis>")
        if dictionary.unk() in (self.mask_idx, self.vis_idx):
            raise ValueError("the dictionary lacks <mask>/<vis> (the captioning task adds them)")

    @classmethod
    def build_model(cls, cfg: NACFConfig, task):
        tcfg = transformer_config(cfg)
        dictionary = task.target_dictionary
        embed = nn.Embedding(len(dictionary), cfg.embed_dim, padding_idx=dictionary.pad())
        nn.init.normal_(embed.weight, mean=0, std=cfg.embed_dim ** -0.5)
        nn.init.constant_(embed.weight[dictionary.pad()], 0)
        return cls(cfg, build_encoder(cfg, task, tcfg), NACFDecoder(cfg, tcfg, dictionary, embed),
                   LengthPredictor(cfg.embed_dim, cfg.max_target_positions, cfg.dropout), dictionary)

    def init_from_pretrained(self):
        """Copy every AR-B parameter whose name and shape match (encoder, embeddings,
        decoder layers — the causal AR decoder and ours share the layer type)."""
        if self.cfg.init_from_ar:
            load_ar_weights(self, self.cfg.init_from_ar, "NACF", required="decoder.layers.")

    def forward_length(self, encoder_out) -> Tensor:
        """Log-probabilities of the caption length (number of words), B x N_max."""
        return self.length_predictor(encoder_out)

    def bare_decoder_pass(self, encoder_out, length: int):
        return self.forward_decoder_nar(self.bare_tokens(encoder_out, length, self.mask_idx), encoder_out)

    def forward_decoder_nar(self, tokens: Tensor, encoder_out) -> Tensor:
        """One bidirectional pass: logits B x N x V for every position."""
        return self.decoder(tokens, encoder_out)

    def forward(self, features, padding_mask, prev_output_tokens, category=None, **kwargs):
        """Masked-LM pass on given decoder input tokens (``prev_output_tokens`` with
        <mask> where to predict) and the length distribution."""
        encoder_out = self.encoder(features, padding_mask, category)
        return self.forward_decoder_nar(prev_output_tokens, encoder_out), self.forward_length(encoder_out)
