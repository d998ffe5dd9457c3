"""Autoregressive Transformer captioner: the AR baseline (AR-B / AIC) and teacher.

Feature encoder (``modules.FeatureEncoder``) + fairseq's own causal
``TransformerDecoderBase`` (cached keys/values: fairseq incremental decoding).
It trains with fairseq's ``label_smoothed_cross_entropy`` and decodes with stock
``fairseq-generate`` beam search (``SequenceGenerator``), because the dataset
puts features under ``net_input["features"]``/``["padding_mask"]``.

Parameter names (``encoder.*``, ``decoder.embed_tokens``, ``decoder.layers.N.*``,
``decoder.output_projection``) are the ones the NAR models of this package reuse,
so they can be initialised from a trained AR checkpoint.
"""

import logging
import os
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerDecoderBase
from fairseq.utils import get_available_activation_fns, safe_getattr
from omegaconf import II, open_dict
import torch
import torch.nn as nn

from ..errors import CheckpointError, DataError
from .modules.feature_encoder import FeatureEncoder
from .modules.highway_encoder import HighwayFeatureEncoder

logger = logging.getLogger(__name__)


@dataclass
class CaptionModelConfig(FairseqDataclass):
    """Sizes shared by every caption model of the package (encoder + decoder)."""
    embed_dim: int = field(default=512, metadata={"help": "model width d"})
    ffn_embed_dim: int = field(default=2048, metadata={"help": "FFN inner width"})
    attention_heads: int = field(default=8, metadata={"help": "attention heads"})
    encoder_layers: int = field(default=3, metadata={"help": "Transformer layers over the features"})
    decoder_layers: int = field(default=3, metadata={"help": "decoder layers"})
    dropout: float = field(default=0.1, metadata={"help": "dropout"})
    attention_dropout: float = field(default=0.1, metadata={"help": "attention dropout"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    activation_fn: ChoiceEnum(get_available_activation_fns()) = field(default="relu")
    normalize_before: bool = field(default=True, metadata={"help": "pre-LayerNorm blocks"})
    share_decoder_input_output_embed: bool = field(default=True, metadata={"help": "tie output projection"})
    encoder_type: ChoiceEnum(["transformer", "highway"]) = field(
        default="transformer", metadata={"help": "transformer: Linear + Transformer layers (modules/feature_encoder); "
                                                 "highway: NACF's per-modality highway embedding + BN, Eq. 1"})
    input_feature_dim: int = field(
        default=0, metadata={"help": "feature dim D_in; 0 = take it from the task's feature store"})
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")


def transformer_config(cfg: CaptionModelConfig) -> TransformerConfig:
    """Our flat config → fairseq's nested ``TransformerConfig`` (same d for encoder and decoder)."""
    t = TransformerConfig()
    for part in (t.encoder, t.decoder):
        part.embed_dim = cfg.embed_dim
        part.ffn_embed_dim = cfg.ffn_embed_dim
        part.attention_heads = cfg.attention_heads
        part.normalize_before = cfg.normalize_before
        part.learned_pos = True
    t.decoder.input_dim = t.decoder.output_dim = cfg.embed_dim
    t.encoder.layers, t.decoder.layers = cfg.encoder_layers, cfg.decoder_layers
    t.dropout, t.attention_dropout = cfg.dropout, cfg.attention_dropout
    t.activation_dropout, t.activation_fn = cfg.activation_dropout, cfg.activation_fn
    t.share_decoder_input_output_embed = cfg.share_decoder_input_output_embed
    t.max_source_positions, t.max_target_positions = cfg.max_source_positions, cfg.max_target_positions
    return t


def resolve_feature_dim(cfg: CaptionModelConfig, task) -> int:
    """The model's input dim: the task's store decides on first build and is saved in
    the checkpoint's cfg; a later task with other features is refused clearly."""
    if not hasattr(task, "feature_dim"):
        raise DataError(f"this model ({safe_getattr(cfg, '_name', 'ar_caption')}) reads pre-extracted features: decode it with --task captioning, "
                         f"not --task {getattr(task.cfg, '_name', type(task).__name__)}")
    if cfg.input_feature_dim == 0:
        with open_dict(cfg):
            cfg.input_feature_dim = task.feature_dim
    elif cfg.input_feature_dim != task.feature_dim:
        raise DataError(f"model expects {cfg.input_feature_dim}-d features, the task's feature store "
                         f"({task.cfg.feature_files}) has {task.feature_dim}-d")
    return cfg.input_feature_dim


def build_output_projection(cfg: CaptionModelConfig, embed_tokens: nn.Embedding) -> nn.Linear:
    """Decoder output layer of our own decoders (NACF, SAIC), named and tied like
    fairseq's ``TransformerDecoderBase.output_projection`` so AR weights load into it."""
    proj = nn.Linear(cfg.embed_dim, embed_tokens.num_embeddings, bias=False)
    if cfg.share_decoder_input_output_embed:
        proj.weight = embed_tokens.weight
    else:
        nn.init.normal_(proj.weight, mean=0, std=cfg.embed_dim ** -0.5)
    return proj


def build_encoder(cfg: CaptionModelConfig, task, tcfg: TransformerConfig):
    # fairseq drops config fields an older checkpoint lacks: read newer ones with their default
    cls = HighwayFeatureEncoder if safe_getattr(cfg, "encoder_type", "transformer") == "highway" else FeatureEncoder
    return cls(tcfg, resolve_feature_dim(cfg, task), task.tokens_per_modality)


def load_ar_weights(model, path: str, what: str, required=None, allowed_new=lambda k: True, skip=()):
    """Initialise ``model`` from an ``ar_caption`` checkpoint: every parameter whose name and
    shape match is copied (encoder, embeddings, decoder layers: the NAR decoders reuse
    fairseq's layer type and names).  A name present in both with another shape is an
    error (the checkpoint must have the same sizes and dictionary); so is a missing
    ``required`` prefix, or a parameter of ours that the checkpoint lacks where
    ``allowed_new(name)`` is False.  Names starting with a ``skip`` prefix are not taken
    (tables that share a name but not a meaning).  Returns our parameters left as built."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: the AR checkpoint to initialise this {what} model from (--init-from-ar) "
                              f"does not exist")
    state = {k: v for k, v in checkpoint_utils.load_checkpoint_to_cpu(path)["model"].items()
             if not k.startswith(tuple(skip))}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: parameters with other shapes than this {what} model: {wrong[:5]} (the AR "
                         f"checkpoint must have the same sizes, dictionary and --max-target-positions)")
    load = {k: v for k, v in state.items() if k in own}
    if required and not any(k.startswith(required) for k in load):
        raise ValueError(f"{path}: no {required}* parameter matches this {what} model; not an ar_caption checkpoint?")
    new = sorted(k for k in own if k not in load)
    refused = [k for k in new if not allowed_new(k)]
    if refused:
        raise CheckpointError(f"{path}: not an ar_caption checkpoint of this architecture; it lacks {refused[:5]}")
    model.load_state_dict(load, strict=False)
    logger.info(f"initialised {len(load)} tensors from {path}; not in the AR checkpoint: {new}")
    return new


class CaptionEncoderDecoderModel(FairseqEncoderDecoderModel):
    """Common entry points of every caption model: ``forward_encoder(net_input)``
    runs once per batch; generators reuse its output.  (Which generators decode a model is said
    where each generator registers, ``generators/registry.py``.)"""

    num_updates = 0  # the training step, set by fairseq before every step (curricula and annealing read it)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def forward_encoder(self, net_input):
        return self.encoder.forward_torchscript(net_input)

    def bare_tokens(self, encoder_out, length: int, symbol=None):
        x = encoder_out["encoder_out"][0]
        fill = self.decoder.dictionary.eos() if symbol is None else symbol
        return torch.full((x.size(1), length), fill, dtype=torch.long, device=x.device)

    def bare_decoder_pass(self, encoder_out, length: int):
        """One full decoder pass over ``length`` target positions, the unit of the benchmark's
        "bare forward" (encoder + one decoder pass): the physical floor of non-autoregressive
        decoding.  AR: one teacher-forced pass (no cache)."""
        return self.decoder(self.bare_tokens(encoder_out, length), encoder_out=encoder_out)

    def max_positions(self):
        return (self.encoder.max_positions(), self.decoder.max_positions())


@register_model("ar_caption", dataclass=CaptionModelConfig)  # arch "ar_caption": d 512, 3 + 3 layers
class ARCaptionModel(CaptionEncoderDecoderModel):
    @classmethod
    def build_model(cls, cfg: CaptionModelConfig, task):
        tcfg = transformer_config(cfg)
        encoder = build_encoder(cfg, task, tcfg)
        dictionary = task.target_dictionary
        embed = nn.Embedding(len(dictionary), cfg.embed_dim, padding_idx=dictionary.pad())
        nn.init.normal_(embed.weight, mean=0, std=cfg.embed_dim ** -0.5)
        nn.init.constant_(embed.weight[dictionary.pad()], 0)
        decoder = TransformerDecoderBase(tcfg, dictionary, embed, no_encoder_attn=False)
        return cls(encoder, decoder)

    def forward(self, features, padding_mask, prev_output_tokens, **kwargs):
        encoder_out = self.encoder(features, padding_mask)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out)


@register_model_architecture("ar_caption", "ar_caption_tiny")
def ar_caption_tiny(args):
    """d 256, 2 + 2 layers, 4 heads: trains on the toy benchmark in minutes on 2 CPU cores."""
    args.embed_dim = getattr(args, "embed_dim", 256)
    args.ffn_embed_dim = getattr(args, "ffn_embed_dim", 1024)
    args.attention_heads = getattr(args, "attention_heads", 4)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 2)


@register_model_architecture("ar_caption", "nacf_arb")
def nacf_arb(args):
    """NACF's AR baseline AR-B (teacher): highway encoder (Eq. 1), no Transformer over
    the features, 1 causal decoder layer, d 512, dropout 0.5 (paper settings)."""
    args.encoder_type = getattr(args, "encoder_type", "highway")
    args.encoder_layers = getattr(args, "encoder_layers", 0)
    args.decoder_layers = getattr(args, "decoder_layers", 1)
    args.dropout = getattr(args, "dropout", 0.5)
