"""SAIC: semi-autoregressive image captioning (Fei et al., 2021).

One encoder (``ar_caption``'s, ``build_encoder``) and ONE decoder used twice with
shared weights (Section 4.1, Fig. 3):

- **Outliner** (stage I): autoregressive over the first word of every group of k
  words, under the group mask;
- **Filler** (stage II): no mask; its input is the outline with k−1 ``<mask>``
  slots after every outlined word; one pass predicts every slot.

Self-attention uses relative position representations clipped at w (Eq. 6-8,
``modules/rpr_attention.py``; ``--rpr-window``, default w = k).  The caption length
is implicit: N_fill = k·N_out.

Layouts (0-based word positions; y' = the caption's words followed by </s> forever;
N words; m = ⌈N/k⌉ outlined words)::

    outline  z_i = y'_{ik},  i = 0..m            z_0..z_{m-1} words, z_m = </s>
    Outliner input  [</s>, z_0, …, z_{m-1}]     at positions 0, k, 2k, …, mk
             target [z_0, z_1, …, z_m]
    Filler   input  [z_0, <mask>×(k−1), z_1, <mask>×(k−1), …, z_{m-1}, <mask>×(k−1), </s>]
                    at positions 0 … mk
             target y'_p at every <mask> slot p (so </s> where p ≥ N)

e.g. k = 2, caption "a red ball on grass" (N = 5, m = 3)::

    Outliner input  </s>  a   ball  grass        positions 0 2 4 6
             target a     ball grass </s>
    Filler   input  a <mask> ball <mask> grass <mask> </s>
             target   red         on          </s>

The caption is then the filled sequence up to its first </s> (Section 4.3).  The
Outliner's first input is </s>, fairseq's start symbol, for [bog].

**The group mask** (Fig. 3, "all non-first words are masked in each group",
Section 4.2).  Over a sequence at absolute positions 0..L−1 with groups
{0..k−1}, {k..2k−1}, …, query position i may attend to key position j iff j is
the first position of a group (a group head, j mod k = 0) and that group is not
after i's own group (⌊j/k⌋ ≤ ⌊i/k⌋).  For k = 2, L = 6 (1 = visible)::

          j: 0 1 2 3 4 5
        i=0  1 0 0 0 0 0
        i=1  1 0 0 0 0 0
        i=2  1 0 1 0 0 0
        i=3  1 0 1 0 0 0
        i=4  1 0 1 0 1 0
        i=5  1 0 1 0 1 0

Each head (rows 0, 2, 4) sees exactly the heads up to itself, so what the heads
compute depends on the heads alone: the Outliner runs on the heads only, at their
absolute positions 0, k, 2k, …, where ``group_mask`` reduces to a causal mask.
That is the same computation as the full-length masked pass (the rows of non-head
positions are never used; tested), k times shorter, and it is what incremental
decoding repeats step by step.  With k = 1 every position is a head, the mask is
causal, and the Outliner is exactly the AR decoder.

Parameter names are those of ``ar_caption``'s fairseq ``TransformerDecoderBase``
(``decoder.embed_tokens``, ``decoder.embed_positions``, ``decoder.layers.N.
{self_attn,self_attn_layer_norm,encoder_attn,encoder_attn_layer_norm,fc1,fc2,
final_layer_norm}``, ``decoder.layer_norm``, ``decoder.output_projection``), so
``--init-from-ar`` loads a trained AR checkpoint of the same sizes (Algorithm 1,
line 2); the relative position tables (``decoder.layers.N.self_attn.rel_keys`` /
``rel_values``) are new and start at zero, so the initialised model is the AR
model until training moves them.  Training: ``criterions/group_mask.py``;
decoding: ``generators/outline_fill.py``.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.models import FairseqIncrementalDecoder, register_model, register_model_architecture
from fairseq.modules import FairseqDropout, LayerNorm, PositionalEmbedding
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

from ..errors import DataError
from .ar_caption import (CaptionEncoderDecoderModel, CaptionModelConfig, build_encoder,
                         ar_caption_tiny, build_output_projection, load_ar_weights, transformer_config)
from .modules.rpr_attention import IncrementalState, RelativePositionMultiheadAttention

logger = logging.getLogger(__name__)

RPR_PARAMETERS = (".self_attn.rel_keys.", ".self_attn.rel_values.")


@dataclass
class SAICConfig(CaptionModelConfig):
    group_size: int = field(default=4, metadata={"help": "k: words per group; the Outliner emits the first of each "
                                                         "(paper default 4; 1 = plain AR)"})
    rpr_window: Optional[int] = field(
        default=None, metadata={"help": "w: relative positions clipped to [-w, w] (Eq. 8); default w = k; "
                                        "0 = no relative position representations (Table 7 -RPR)"})
    init_from_ar: Optional[str] = field(
        default=None, metadata={"help": "ar_caption checkpoint (same sizes and dictionary) to initialise from "
                                        "(Algorithm 1, line 2)"})


# ----------------------------------------------------------------------------- layouts

def group_mask(query_positions: Tensor, key_positions: Tensor, k: int) -> Tensor:
    """The group mask (Fig. 3): ``visible[i, j]`` is True iff key position p_j is a
    group head (p_j mod k = 0) of a group not after query p_i's (⌊p_j/k⌋ ≤ ⌊p_i/k⌋).
    Positions are absolute; see the module docstring for the pattern."""
    is_head = key_positions.remainder(k).eq(0)
    return is_head[None, :] & (key_positions[None, :] // k <= query_positions[:, None] // k)


def _extended(target: Tensor, length: int, eos: int, pad: int) -> Tensor:
    """y': the captions' words followed by </s> (pad → </s>), cut or extended to ``length``."""
    ext = target.masked_fill(target.eq(pad), eos)
    if ext.size(1) < length:
        ext = torch.cat([ext, ext.new_full((ext.size(0), length - ext.size(1)), eos)], dim=1)
    return ext[:, :length]


def outline_layout(target: Tensor, k: int, eos: int, pad: int) -> Tuple[Tensor, Tensor]:
    """Outliner teacher forcing for captions ``target`` (B x T: words, </s>, pad).

    Returns (input, heads), both B x (max m + 1), pad after each row's m + 1:
    heads = [z_0..z_m] with z_i = y'_{ik}, m = ⌈N/k⌉ (z_m = </s>); input = [</s>,
    z_0..z_{m-1}].  With k = 1 these are fairseq's prev_output_tokens and target."""
    n_words = (target.ne(pad) & target.ne(eos)).sum(1)
    m = (n_words + k - 1) // k
    n_heads = int(m.max()) + 1
    steps = torch.arange(n_heads, device=target.device)
    heads = _extended(target, (n_heads - 1) * k + 1, eos, pad)[:, steps * k]
    beyond = steps[None, :] > m[:, None]
    prev = torch.cat([heads.new_full((heads.size(0), 1), eos), heads[:, :-1]], dim=1)
    return prev.masked_fill(beyond, pad), heads.masked_fill(beyond, pad)


def filler_layout(heads: Tensor, k: int, mask: int, pad: int) -> Tensor:
    """Filler input from outlines ``heads`` (B x H: z_0..z_m ending with </s>, pad
    after): z_i at position ik, <mask> in the k−1 slots after every outlined word,
    the final </s> at mk, pad after; B x ((H−1)k + 1)."""
    n_heads = heads.ne(pad).sum(1)
    length = (heads.size(1) - 1) * k + 1
    tokens = heads.new_full((heads.size(0), length), mask)
    tokens[:, ::k] = heads
    beyond = torch.arange(length, device=heads.device)[None, :] >= ((n_heads - 1) * k + 1)[:, None]
    return tokens.masked_fill(beyond, pad)


def filler_slots(filler_input: Tensor, k: int, pad: int) -> Tensor:
    """The positions the Filler predicts (B x L bool): the k−1 slots after every outlined
    word, i.e. non-pad positions p with p mod k ≠ 0 (by position, whatever the token)."""
    positions = torch.arange(filler_input.size(1), device=filler_input.device)
    return filler_input.ne(pad) & positions.remainder(k).ne(0)[None, :]


def filler_targets(target: Tensor, filler_input: Tensor, k: int, eos: int, pad: int) -> Tensor:
    """y'_p at the Filler's slots of ``filler_input``, pad elsewhere (the loss ignores pad)."""
    slots = filler_slots(filler_input, k, pad)
    return _extended(target, filler_input.size(1), eos, pad).masked_fill(~slots, pad)


# ----------------------------------------------------------------------------- decoder

class SAICDecoderLayer(TransformerDecoderLayerBase):
    """fairseq's decoder layer (same sub-modules and names) whose self-attention has
    relative position representations and is told the absolute positions."""

    def __init__(self, tcfg, rpr_window: int):
        self.rpr_window = rpr_window  # read by build_self_attention during super().__init__
        super().__init__(tcfg)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return RelativePositionMultiheadAttention(embed_dim, cfg.decoder.attention_heads, self.rpr_window,
                                                  dropout=cfg.attention_dropout)

    def forward(self, x: Tensor, encoder_out: Tensor, encoder_padding_mask: Optional[Tensor], positions: Tensor,
                incremental_state: Optional[IncrementalState] = None, self_attn_mask: Optional[Tensor] = None,
                self_attn_padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: T x B x C at absolute ``positions`` (T,).  The residual/LayerNorm order is
        fairseq's ``TransformerDecoderLayerBase.forward`` (pre- or post-norm)."""
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(x, key_padding_mask=self_attn_padding_mask, incremental_state=incremental_state,
                              attn_mask=self_attn_mask, positions=positions)
        x = residual + self.dropout_module(x)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.encoder_attn_layer_norm(x)
        x, _ = self.encoder_attn(query=x, key=encoder_out, value=encoder_out, key_padding_mask=encoder_padding_mask,
                                 incremental_state=incremental_state, static_kv=True, need_weights=False)
        x = residual + self.dropout_module(x)
        if not self.normalize_before:
            x = self.encoder_attn_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.activation_dropout_module(self.activation_fn(self.fc1(x)))
        x = residual + self.dropout_module(self.fc2(x))
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x


class SAICDecoder(FairseqIncrementalDecoder):
    """The shared Outliner/Filler decoder.  ``forward`` is the Outliner with fairseq's
    decoder interface (teacher forcing over a head sequence, or one incremental step),
    so fairseq's ``SequenceGenerator`` beam-searches outlines; ``forward_filler`` is
    the one-pass Filler."""

    def __init__(self, cfg: SAICConfig, tcfg, dictionary, embed_tokens: nn.Embedding, rpr_window: int):
        super().__init__(dictionary)
        d = cfg.embed_dim
        self.group_size = cfg.group_size
        self.padding_idx = dictionary.pad()
        self.max_target_positions = cfg.max_target_positions
        self.embed_tokens = embed_tokens
        self.embed_scale = d ** 0.5
        self.embed_positions = PositionalEmbedding(cfg.max_target_positions, d, self.padding_idx, learned=True)
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList([SAICDecoderLayer(tcfg, rpr_window) for _ in range(cfg.decoder_layers)])
        self.layer_norm = LayerNorm(d) if cfg.normalize_before else None
        self.output_projection = build_output_projection(cfg, embed_tokens)

    def check_position(self, last: int) -> None:
        if last >= self.max_target_positions:
            raise ValueError(f"decoder position {last} is beyond --max-target-positions {self.max_target_positions}")

    def run(self, tokens: Tensor, positions: Tensor, encoder_out: Dict[str, List[Tensor]],
            self_attn_mask: Optional[Tensor] = None, incremental_state: Optional[IncrementalState] = None) -> Tensor:
        """Logits B x T x V for ``tokens`` (B x T) at absolute ``positions`` (T,), with an
        optional self-attention mask (T x S, True = blocked); the callers check the positions
        (``check_position``) from sizes, so no step waits on the device."""
        pad_mask = tokens.eq(self.padding_idx)
        # fairseq's learned positions: row padding_idx + 1 + position, the (zero) padding row for pad tokens
        pos_ids = (positions + self.padding_idx + 1)[None, :].expand_as(tokens).masked_fill(pad_mask, self.padding_idx)
        x = self.embed_scale * self.embed_tokens(tokens) + self.embed_positions.weight[pos_ids]
        x = self.dropout_module(x).transpose(0, 1)
        enc = encoder_out["encoder_out"][0]
        enc_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        for layer in self.layers:
            x = layer(x, enc, enc_mask, positions, incremental_state, self_attn_mask, pad_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.output_projection(x.transpose(0, 1))

    def forward(self, prev_output_tokens: Tensor, encoder_out: Dict[str, List[Tensor]],
                incremental_state: Optional[IncrementalState] = None, group_size: Optional[int] = None, **unused):
        """Outliner: ``prev_output_tokens`` = [</s>, z_0, …] (B x H) at positions 0, k, 2k, …
        under the group mask; with ``incremental_state`` only the last token is run
        (fairseq's convention: the whole prefix is passed).  ``group_size`` overrides k
        (1 = the AIC samples of training).  Returns (logits B x H x V, {"attn": [None]})."""
        k = group_size or self.group_size
        self.check_position((prev_output_tokens.size(1) - 1) * k)
        positions = torch.arange(prev_output_tokens.size(1), device=prev_output_tokens.device) * k
        if incremental_state is not None:
            logits = self.run(prev_output_tokens[:, -1:], positions[-1:], encoder_out,
                              incremental_state=incremental_state)
        else:
            blocked = ~group_mask(positions, positions, k)
            logits = self.run(prev_output_tokens, positions, encoder_out, self_attn_mask=blocked)
        return logits, {"attn": [None]}

    def forward_filler(self, tokens: Tensor, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
        """Filler: one pass over ``tokens`` (B x L, ``filler_layout``) at positions 0..L−1,
        no mask (every non-pad position sees every other); logits B x L x V."""
        self.check_position(tokens.size(1) - 1)
        return self.run(tokens, torch.arange(tokens.size(1), device=tokens.device), encoder_out)

    def max_positions(self):
        return self.max_target_positions


# ----------------------------------------------------------------------------- model

@register_model("saic", dataclass=SAICConfig)
class SAICModel(CaptionEncoderDecoderModel):
    def __init__(self, cfg: SAICConfig, encoder, decoder: SAICDecoder, dictionary):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.group_size = cfg.group_size
        self.mask_idx = dictionary.index("<mask>")
        if self.mask_idx == dictionary.unk():
            raise ValueError("the dictionary lacks <mask> (the captioning task adds it)")

    @property
    def generators(self):
        """outline-fill; with k = 1 the Outliner is a plain AR decoder, so fairseq's beam search
        (``sequence``) also decodes it (with k > 1 it would return only the outline)."""
        return ("outline-fill", "sequence") if self.group_size == 1 else ("outline-fill",)

    @classmethod
    def build_model(cls, cfg: SAICConfig, task):
        if not 1 <= cfg.group_size < cfg.max_target_positions:
            raise DataError(f"--group-size must be in [1, --max-target-positions {cfg.max_target_positions}), "
                             f"got {cfg.group_size}")
        window = cfg.group_size if cfg.rpr_window is None else cfg.rpr_window
        if window < 0:
            raise ValueError(f"--rpr-window must be >= 0, got {window}")
        tcfg = transformer_config(cfg)
        dictionary = task.target_dictionary
        embed = nn.Embedding(len(dictionary), cfg.embed_dim, padding_idx=dictionary.pad())
        nn.init.normal_(embed.weight, mean=0, std=cfg.embed_dim ** -0.5)
        nn.init.constant_(embed.weight[dictionary.pad()], 0)
        return cls(cfg, build_encoder(cfg, task, tcfg), SAICDecoder(cfg, tcfg, dictionary, embed, window), dictionary)

    def init_from_pretrained(self):
        """Algorithm 1, line 2 (P_SAIC ← P_AIC): load every parameter of an ``ar_caption``
        checkpoint of the same sizes; only the relative position tables are new."""
        if self.cfg.init_from_ar:
            load_ar_weights(self, self.cfg.init_from_ar, "SAIC",
                            allowed_new=lambda k: any(r in k for r in RPR_PARAMETERS))

    def forward_outliner(self, prev_heads: Tensor, encoder_out, incremental_state: Optional[IncrementalState] = None,
                         group_size: Optional[int] = None) -> Tensor:
        """Outliner logits for the head inputs [</s>, z_0, …] (teacher forcing), or, with
        ``incremental_state``, for the last one only (one outline step)."""
        return self.decoder(prev_heads, encoder_out, incremental_state=incremental_state, group_size=group_size)[0]

    def bare_decoder_pass(self, encoder_out, length: int):
        """One Filler pass over ``length`` positions (the Outliner steps are incremental)."""
        return self.forward_filler(self.bare_tokens(encoder_out, length, self.mask_idx), encoder_out)

    def forward_filler(self, tokens: Tensor, encoder_out) -> Tensor:
        """Filler logits for a ``filler_layout`` input (one non-autoregressive pass)."""
        return self.decoder.forward_filler(tokens, encoder_out)

    def forward(self, features, padding_mask, prev_output_tokens, **kwargs):
        """Encoder + Outliner over ``prev_output_tokens`` read as a head sequence (with
        k = 1 this is the AR model's forward)."""
        return self.decoder(prev_output_tokens, self.encoder(features, padding_mask))


@register_model_architecture("saic", "saic_tiny")
def saic_tiny(args):
    """The sizes of ``ar_caption_tiny`` (d 256, 2 + 2 layers, 4 heads), to initialise from it."""
    ar_caption_tiny(args)
