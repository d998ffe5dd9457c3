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

from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerDecoderBase
from fairseq.utils import get_available_activation_fns, safe_getattr
from omegaconf import II, open_dict
import torch.nn as nn

from .modules.feature_encoder import FeatureEncoder
from .modules.highway_encoder import HighwayFeatureEncoder


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
    if cfg.input_feature_dim == 0:
        with open_dict(cfg):
            cfg.input_feature_dim = task.feature_dim
    elif cfg.input_feature_dim != task.feature_dim:
        raise ValueError(f"model expects {cfg.input_feature_dim}-d features, the task's feature store "
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


class CaptionEncoderDecoderModel(FairseqEncoderDecoderModel):
    """Common entry points of every caption model: ``forward_encoder(net_input)``
    runs once per batch; generators reuse its output."""

    def forward_encoder(self, net_input):
        return self.encoder.forward_torchscript(net_input)

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
