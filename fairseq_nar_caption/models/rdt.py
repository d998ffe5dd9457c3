"""RDT: ranking diffusion transformer (Wan et al.), bit-diffusion image captioning.

A caption is a fixed-length sequence of L = ``--seq-len`` word slots (the caption, </s>,
then </s> up to L: the reference's fixed length 20 with id 0 = EOS as filler), each word
as n = ⌈log2 W⌉ analog bits (``modules/bits.py``).  The model f(x_t, γ(t'), G) predicts
x0 from noisy bits x_t:

- **Ranking Visual Encoder** (``RDTVisualEncoder``): grid features → Linear → ReLU →
  LayerNorm → dropout (+ a learned position per grid), then N_v RVE layers of multi-head
  ranking attention (``modules/ranking_attention.py``, Eq. 8-12, 15-23).  Its output is
  the CaptionEncoderBase dict; it also embeds the retrieved sentence once
  (``retrieval_out`` B x L_r x C, ``retrieval_padding_mask``), so the diffusion loop
  reuses both.
- **Semantic Transformer** (ST): Transformer layers over [embed(x_t ⊕ x̂0_prev) + position
  + time; embedded retrieved sentence], cut back to the first L outputs (Algorithm 1,
  lines 4-7).  Time conditioning: γ(t') (the noise level) through random-Fourier
  features → Linear → SiLU → Linear, added to every slot.  Self-conditioning: the
  previous x̂0 is concatenated to x_t (zeros when there is none); the criterion feeds it
  with probability 0.5 in training.
- **Sentence Decoder** (SD): non-causal Transformer decoder layers with cross-attention
  to the visual tokens (Algorithm 1, line 8), then vocabulary logits; x̂0 = softmax over
  the words × the code book (default, as the reference) or raw bits (``--x0-prediction
  raw``).  Symbols that are not words (<s>, <pad>, <mask>, <vis>, <blank>) get −∞.
- **Cascade** (``--cascaded``): a second-stage model that also reads the bits of a first
  model's caption, concatenated to its input (SCD-Net's cascaded diffusion).

Noise schedule (Eq. 1): x_t = sqrt(σ(−γ(t')))·x0 + sqrt(σ(γ(t')))·ε with the paper's
monotonically increasing γ = −log SNR: cosine (default, s = 0.008) or linear
(``--noise-schedule``), as in the reference's ``alpha_cosine_log_snr`` /
``beta_linear_log_snr`` with the sign of the paper.
Training: ``criterions/rdt_loss.py`` (stage 1), ``criterions/rdt_scst.py`` (stage 2);
decoding: ``generators/diffusion.py``.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum
from fairseq.models import FairseqDecoder, register_model, register_model_architecture
from fairseq.modules import LayerNorm
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from torch import Tensor

from ..data.text import RESERVED_SYMBOLS
from ..errors import DataError, OptionError
from .ar_caption import (CaptionEncoderDecoderModel, CaptionModelConfig, load_ar_weights, resolve_feature_dim,
                         transformer_config)
from .modules.bits import codebook, num_bits, predict_x0
from .modules.feature_encoder import CaptionEncoderBase
from .modules.ranking_attention import RankingEncoderLayer

COSINE_S = 0.008


def log_snr_gamma(t: Tensor, schedule: str = "cosine") -> Tensor:
    """γ(t'), the paper's increasing noise function (= −log SNR), t' in [0, 1]."""
    if schedule == "cosine":  # −(−log(cos((t+s)/(1+s)·π/2)^−2 − 1))
        c = torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2)
        return torch.log((c.pow(-2) - 1).clamp(min=1e-5))
    if schedule == "linear":  # −(−log(expm1(1e-4 + 10 t²)))
        return torch.log(torch.expm1(1e-4 + 10 * t * t))
    raise OptionError(f"unknown noise schedule {schedule!r} (cosine, linear)")


def alpha_sigma(gamma: Tensor) -> Tuple[Tensor, Tensor]:
    """(sqrt(σ(−γ)), sqrt(σ(γ))): the signal and noise coefficients of Eq. 1 / Eq. 3-4."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def forward_noise(x0: Tensor, t: Tensor, schedule: str, noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Eq. 1: x_t = sqrt(σ(−γ(t')))·x0 + sqrt(σ(γ(t')))·ε for per-row times t (B,).
    Returns (x_t, γ(t'))."""
    gamma = log_snr_gamma(t, schedule)
    a, s = alpha_sigma(gamma)
    eps = torch.randn_like(x0) if noise is None else noise
    return a.view(-1, 1, 1) * x0 + s.view(-1, 1, 1) * eps, gamma


def fill_slots(tokens: Tensor, pad: int, eos: int, length: int) -> Tensor:
    """B x T tokens (pad after </s>) → B x ``length``: pad → </s>, cut to ``length``, filled with </s>."""
    out = tokens.masked_fill(tokens.eq(pad), eos)[:, :length]
    if out.size(1) < length:
        out = torch.cat([out, out.new_full((out.size(0), length - out.size(1)), eos)], dim=1)
    return out


@dataclass
class RDTConfig(CaptionModelConfig):
    """Defaults = the paper's settings (Section IV-A), ``--arch rdt``: 3 RVE layers, 3 ST + 3 SD
    blocks, d 512, 8 heads, FFN 2048, λ_F 0.75, λ_E 0.55, L 20 (14 bits with a 10k-word vocabulary)."""
    semantic_layers: int = field(default=3, metadata={"help": "Semantic Transformer blocks"})
    lambda_f: float = field(default=0.75, metadata={"help": "λ_F: share of ranked keys in forward-ranking "
                                                            "attention (Eq. 17); 1 with λ_E 0 = self-attention"})
    lambda_e: float = field(default=0.55, metadata={"help": "λ_E: share of lowest-ranked keys in inverse-ranking "
                                                            "attention (Eq. 20); 0 = no inverse branch"})
    bit_scale: float = field(default=1.0, metadata={"help": "analog bits are ±scale"})
    seq_len: int = field(default=20, metadata={"help": "L: word slots of the diffusion (caption + </s> must fit)"})
    self_cond_prob: float = field(default=0.5, metadata={"help": "probability of self-conditioning in training"})
    x0_prediction: ChoiceEnum(["softmax", "raw"]) = field(
        default="softmax", metadata={"help": "softmax: x̂0 = softmax over words × code book; raw: regressed bits"})
    noise_schedule: ChoiceEnum(["cosine", "linear"]) = field(default="cosine", metadata={"help": "γ of Eq. 1"})
    no_retrieval: bool = field(default=False, metadata={"help": "no retrieved-sentence condition (the ST reads the "
                                                                "noisy words alone)"})
    retrieval_embed: ChoiceEnum(["separate", "tied"]) = field(
        default="separate", metadata={"help": "the retrieved sentence's word embeddings: separate (their own table, "
                                              "as the reference's r_token_embed) or tied to the output projection "
                                              "(a word read in the condition and the same word written share one "
                                              "vector: a direct copy path)"})
    retrieval_slots: bool = field(
        default=False, metadata={"help": "also give slot i the bits of the retrieved sentence's i-th word (</s> after "
                                         "it), concatenated to its input as a cascade's first-stage caption (SCD-Net): "
                                         "an aligned copy path beside the Semantic Transformer's attention"})
    init_from_ar: Optional[str] = field(
        default=None, metadata={"help": "ar_caption checkpoint (same sizes and dictionary): the word embeddings (the "
                                        "output projection, and the retrieved sentence's table), the visual "
                                        "encoder's positions and the Sentence Decoder layers start from it; the "
                                        "ranking encoder layers, the Semantic Transformer and the bit/time "
                                        "inputs are new"})
    cascaded: bool = field(default=False, metadata={"help": "second-stage model: also reads a first model's "
                                                            "caption bits"})
    time_features: int = field(default=16, metadata={"help": "random Fourier features of γ (time embedding)"})


class RDTVisualEncoder(CaptionEncoderBase):
    """Grid features → Ranking Visual Encoder; also embeds the retrieved sentence once."""

    def __init__(self, cfg: RDTConfig, tcfg, input_dim: int, tokens_per_modality, dictionary):
        super().__init__(tcfg, tokens_per_modality)
        d = cfg.embed_dim
        self.visual_embed = nn.Sequential(nn.Linear(input_dim, d), nn.ReLU(), nn.LayerNorm(d), nn.Dropout(cfg.dropout))
        self.embed_positions = nn.Embedding(tcfg.max_source_positions, d)
        nn.init.normal_(self.embed_positions.weight, std=0.02)
        self.layers = nn.ModuleList([
            RankingEncoderLayer(d, cfg.attention_heads, cfg.ffn_embed_dim, cfg.lambda_f, cfg.lambda_e,
                                cfg.dropout, cfg.attention_dropout) for _ in range(cfg.encoder_layers)])
        self.use_retrieval = not cfg.no_retrieval
        if self.use_retrieval:
            self.padding_idx = dictionary.pad()
            self.embed_retrieved = nn.Embedding(len(dictionary), d, padding_idx=self.padding_idx)
            nn.init.normal_(self.embed_retrieved.weight, std=d ** -0.5)
            nn.init.constant_(self.embed_retrieved.weight[self.padding_idx], 0)
            self.retrieved_positions = nn.Embedding(tcfg.max_target_positions, d)
            nn.init.normal_(self.retrieved_positions.weight, std=0.02)
            self.retrieved_norm = LayerNorm(d)

    def forward(self, features: Tensor, padding_mask: Optional[Tensor] = None,
                retrieved_tokens: Optional[Tensor] = None, **unused) -> Dict[str, List[Tensor]]:
        n = features.size(1)
        if n > self.max_source_positions:
            raise ValueError(f"{n} feature vectors exceed --max-source-positions {self.max_source_positions}")
        x = self.visual_embed(features) + self.embed_positions.weight[:n][None]
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        for layer in self.layers:
            x = layer(x, padding_mask)
        out = self.encoder_output(x.transpose(0, 1), padding_mask)
        if self.use_retrieval:
            if retrieved_tokens is None:
                raise DataError("this RDT model is conditioned on a retrieved sentence: give the task "
                                 "--retrieval-file (nar-caption-retrieve writes it), or train with --no-retrieval")
            lr = retrieved_tokens.size(1)
            if lr > self.retrieved_positions.num_embeddings:
                raise ValueError(f"retrieved sentence of {lr} tokens exceeds --max-target-positions "
                                 f"{self.retrieved_positions.num_embeddings}")
            r = self.embed_retrieved(retrieved_tokens) + self.retrieved_positions.weight[:lr][None]
            out["retrieval_out"] = [self.retrieved_norm(r)]
            out["retrieval_padding_mask"] = [retrieved_tokens.eq(self.padding_idx)]
            out["retrieved_tokens"] = [retrieved_tokens]
        return out


class TimeEmbedding(nn.Module):
    """γ(t') → random Fourier features [γ, sin 2πγw, cos 2πγw] (w learned) → Linear → SiLU → Linear."""

    def __init__(self, n_features: int, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(n_features))
        self.mlp = nn.Sequential(nn.Linear(2 * n_features + 1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, gamma: Tensor) -> Tensor:  # (B,) → B x dim
        g = gamma.view(-1, 1).float()
        f = 2 * math.pi * g * self.weights[None]
        return self.mlp(torch.cat([g, f.sin(), f.cos()], dim=-1))


class RDTDenoiser(FairseqDecoder):
    """f(x_t, γ(t'), G): Semantic Transformer + Sentence Decoder → (logits, x̂0)."""

    def __init__(self, cfg: RDTConfig, tcfg, dictionary, n_bits: int):
        super().__init__(dictionary)
        d = cfg.embed_dim
        self.seq_len, self.x0_prediction = cfg.seq_len, cfg.x0_prediction
        self.cascaded, self.retrieval_slots = cfg.cascaded, cfg.retrieval_slots and not cfg.no_retrieval
        # [x_t, x̂0_prev (, first-stage caption) (, retrieved sentence)]
        self.in_proj = nn.Linear(n_bits * (2 + int(cfg.cascaded) + int(self.retrieval_slots)), d)
        self.embed_positions = nn.Embedding(cfg.seq_len, d)
        nn.init.normal_(self.embed_positions.weight, std=0.02)
        self.time_embed = TimeEmbedding(cfg.time_features, d)
        self.input_norm = LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.semantic = nn.ModuleList([TransformerEncoderLayerBase(tcfg) for _ in range(cfg.semantic_layers)])
        self.layers = nn.ModuleList([TransformerDecoderLayerBase(tcfg) for _ in range(cfg.decoder_layers)])
        self.layer_norm = LayerNorm(d) if cfg.normalize_before else None
        self.output_projection = nn.Linear(d, len(dictionary))
        self.bit_projection = nn.Linear(d, n_bits) if cfg.x0_prediction == "raw" else None

    def forward(self, x_t: Tensor, gamma: Tensor, encoder_out: Dict[str, List[Tensor]], self_cond: Tensor,
                cascade_bits: Optional[Tensor] = None, word_mask: Optional[Tensor] = None,
                book: Optional[Tensor] = None, slot_condition: Optional[Tensor] = None,
                **unused) -> Tuple[Tensor, Tensor]:
        """x_t, self_cond: B x L x n; gamma: (B,).  Returns (logits B x L x W, x̂0 B x L x n)."""
        bsz, length, _ = x_t.shape
        parts = [x_t, self_cond]
        if self.cascaded:
            if cascade_bits is None:
                raise ValueError("a cascaded RDT model needs the first-stage caption (cascade_bits)")
            parts.append(cascade_bits)
        if self.retrieval_slots:
            parts.append(slot_condition)
        # Algorithm 1, line 4: embed(cat(x_t, γ(t'))) (+ positions)
        x = self.in_proj(torch.cat(parts, dim=-1)) + self.embed_positions.weight[:length][None]
        x = self.dropout(self.input_norm(x + self.time_embed(gamma)[:, None, :]))
        pad_mask = None
        if "retrieval_out" in encoder_out:  # line 5: cat with the retrieved sentence x_c
            x = torch.cat([x, encoder_out["retrieval_out"][0]], dim=1)
            pad_mask = torch.cat([x.new_zeros(bsz, length, dtype=torch.bool),
                                  encoder_out["retrieval_padding_mask"][0]], dim=1)
        x = x.transpose(0, 1)
        for layer in self.semantic:  # line 6: ST
            x = layer(x, encoder_padding_mask=pad_mask)
        x = x[:length]  # line 7: cut operation
        enc = encoder_out["encoder_out"][0]
        enc_mask = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        for layer in self.layers:  # line 8: SD(x_start, G), no causal mask
            x, _, _ = layer(x, enc, enc_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)
        logits = self.output_projection(x)
        if word_mask is not None:
            logits = logits.masked_fill(~word_mask, -math.inf)
        if self.bit_projection is not None:
            x0 = self.bit_projection(x)
        else:
            x0 = predict_x0(logits, book)
        return logits, x0

    def max_positions(self):
        return self.seq_len


@register_model("rdt", dataclass=RDTConfig)  # arch "rdt": the paper's settings (RDTConfig defaults)
class RDTModel(CaptionEncoderDecoderModel):

    def __init__(self, cfg: RDTConfig, encoder, decoder, dictionary, n_bits: int):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.n_bits, self.bit_scale, self.seq_len = n_bits, cfg.bit_scale, cfg.seq_len
        self.noise_schedule = cfg.noise_schedule
        self.eos, self.pad = dictionary.eos(), dictionary.pad()
        not_words = {dictionary.bos(), dictionary.pad()}
        for sym in RESERVED_SYMBOLS:
            if sym in dictionary.indices:
                not_words.add(dictionary.index(sym))
        word_mask = torch.ones(len(dictionary), dtype=torch.bool)
        word_mask[sorted(not_words)] = False
        self.register_buffer("word_mask", word_mask, persistent=False)
        self.register_buffer("book", codebook(len(dictionary), n_bits, cfg.bit_scale), persistent=False)

    @classmethod
    def build_model(cls, cfg: RDTConfig, task):
        if cfg.seq_len < 2 or cfg.seq_len > cfg.max_target_positions:
            raise ValueError(f"--seq-len must be in [2, --max-target-positions {cfg.max_target_positions}], "
                             f"got {cfg.seq_len}")
        if not cfg.no_retrieval and getattr(task, "retrieved", "given") is None:
            raise DataError("this RDT model is conditioned on a retrieved sentence: give the task "
                            "--retrieval-file (nar-caption-retrieve writes it), or train with --no-retrieval")
        tcfg = transformer_config(cfg)
        dictionary = task.target_dictionary
        n_bits = num_bits(len(dictionary))
        encoder = RDTVisualEncoder(cfg, tcfg, resolve_feature_dim(cfg, task), task.tokens_per_modality, dictionary)
        decoder = RDTDenoiser(cfg, tcfg, dictionary, n_bits)
        if encoder.use_retrieval and cfg.retrieval_embed == "tied":  # one V x d table (padding rows are masked out)
            encoder.embed_retrieved.weight = decoder.output_projection.weight
        return cls(cfg, encoder, decoder, dictionary, n_bits)

    def init_from_pretrained(self):
        """``--init-from-ar``: the parameters an ``ar_caption`` checkpoint shares with RDT by name and
        shape (``load_ar_weights``), and its token embedding as the retrieved sentence's table."""
        path = getattr(self.cfg, "init_from_ar", None)
        if not path:
            return
        # the slots' positions and the encoder layers (ranking attention) have other meanings in RDT
        load_ar_weights(self, path, "RDT", required="decoder.layers.",
                        skip=("decoder.embed_positions.", "encoder.layers."))
        if self.encoder.use_retrieval and self.encoder.embed_retrieved.weight is not self.decoder.output_projection.weight:
            from fairseq import checkpoint_utils

            embed = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]["decoder.embed_tokens.weight"]
            with torch.no_grad():
                self.encoder.embed_retrieved.weight.copy_(embed)

    # ------------------------------------------------------------ bits and targets
    def check_targets(self, targets, where, eos: int) -> None:
        """The task's hook for training splits: a target (words + </s>) longer than ``--seq-len`` is
        refused when the split loads, naming the file and the row, not when a batch reaches it."""
        for i, t in enumerate(targets):
            if t.numel() > self.seq_len:
                raise DataError(f"{where(i)}: {t.numel()} target tokens (words + </s>) do not fit --seq-len "
                                f"{self.seq_len}: raise --seq-len or drop longer captions")

    def fixed_length(self, tokens: Tensor, item_ids=None, what: str = "caption") -> Tensor:
        """Captions (B x T: words, </s>, pad) → B x L: words, then </s> in every later slot."""
        n = tokens.ne(self.pad).sum(1)
        too_long = (n > self.seq_len).nonzero().view(-1).tolist()
        if too_long:
            i = too_long[0]
            name = item_ids[i] if item_ids is not None else i
            raise DataError(f"{what} of item {name}: {int(n[i])} tokens (words + </s>) do not fit "
                            f"--seq-len {self.seq_len}: raise --seq-len or drop longer captions")
        return fill_slots(tokens, self.pad, self.eos, self.seq_len)

    def fill_slots(self, tokens: Tensor) -> Tensor:
        """B x T tokens (pad after </s>) → B x L: pad → </s>, cut to L, filled with </s> up to L."""
        return fill_slots(tokens, self.pad, self.eos, self.seq_len)

    def sentence_mask(self, fixed: Tensor) -> Tensor:
        """Slots up to and including the first </s> (B x L bool)."""
        is_eos = fixed.eq(self.eos).long()
        return (is_eos.cumsum(1) - is_eos).eq(0)

    def to_bits(self, tokens: Tensor) -> Tensor:
        return self.book[tokens]

    def gamma(self, t: Tensor) -> Tensor:
        return log_snr_gamma(t, self.noise_schedule)

    def denoise(self, x_t: Tensor, gamma: Tensor, encoder_out, self_cond: Optional[Tensor] = None,
                cascade_bits: Optional[Tensor] = None, word_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """f(x_t, γ(t'), G) → (vocabulary logits, x̂0); ``word_mask`` (default: the model's)
        marks the symbols the logits may reach (a generator passes its vocabulary rule)."""
        if self_cond is None:
            self_cond = torch.zeros_like(x_t)
        slot_condition = None
        if self.decoder.retrieval_slots:  # the retrieved sentence, cut or filled with </s> to the L slots
            slot_condition = self.to_bits(self.fill_slots(encoder_out["retrieved_tokens"][0]))
        return self.decoder(x_t, gamma, encoder_out, self_cond, cascade_bits,
                            word_mask=self.word_mask if word_mask is None else word_mask, book=self.book,
                            slot_condition=slot_condition)

    def bare_decoder_pass(self, encoder_out, length: int = 0):
        """One denoising pass over the L slots (its fixed length, whatever the caption's)."""
        x = encoder_out["encoder_out"][0]
        x_t = torch.randn(x.size(1), self.seq_len, self.n_bits, device=x.device)
        return self.denoise(x_t, self.gamma(torch.full((x.size(1),), 0.5, device=x.device)), encoder_out)

    def forward(self, features, padding_mask, x_t, t, self_cond=None, retrieved_tokens=None, cascade_bits=None,
                **unused):
        """Encoder + one denoising pass at times t (B,) over noisy bits x_t."""
        encoder_out = self.encoder(features, padding_mask, retrieved_tokens=retrieved_tokens)
        return self.denoise(x_t, self.gamma(t), encoder_out, self_cond, cascade_bits)

    def max_positions(self):
        return (self.encoder.max_positions(), self.cfg.max_target_positions)


@register_model_architecture("rdt", "rdt_tiny")
def rdt_tiny(args):
    """Toy: d 128, 1 RVE + 1 ST + 2 SD layers, 4 heads, L 24 (toy captions reach 20 words)."""
    args.embed_dim = getattr(args, "embed_dim", 128)
    args.ffn_embed_dim = getattr(args, "ffn_embed_dim", 512)
    args.attention_heads = getattr(args, "attention_heads", 4)
    args.encoder_layers = getattr(args, "encoder_layers", 1)
    args.semantic_layers = getattr(args, "semantic_layers", 1)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.seq_len = getattr(args, "seq_len", 24)
