"""A non-causal Transformer decoder over N learnable queries (NARVL's decoder; the DAG decoder's
graph vertices): every query attends to every other and to the encoder output, one pass gives N
distributions over the vocabulary.

``cfg`` needs ``embed_dim``, ``dropout``, ``num_queries``, ``decoder_input`` ("query", or
"encoder": the encoder output as the decoder input, NARVL's Tables 6-7) and
``share_decoder_input_output_embed``.  Positions: each query has its own learned vector, and a
learned position embedding is added to the decoder input.  ``extract_features`` gives the last
hidden states, ``forward`` the logits.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import FairseqDecoder
from fairseq.modules import FairseqDropout, LayerNorm
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor


def build_shared_embedding(cfg, dictionary) -> nn.Embedding:
    emb = nn.Embedding(len(dictionary), cfg.embed_dim, padding_idx=dictionary.pad())
    nn.init.normal_(emb.weight, mean=0, std=cfg.embed_dim ** -0.5)
    nn.init.constant_(emb.weight[dictionary.pad()], 0)
    return emb


class QueryDecoder(FairseqDecoder):
    """Non-causal Transformer decoder over N learnable queries (or over the encoder output)."""

    def __init__(self, cfg, tcfg, dictionary, embed_tokens: nn.Embedding, num_positions: int):
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
        """→ (logits B x N x V, {"attn": None, "padding_mask": ...}).  ``prev_output_tokens`` is
        ignored: the input is the queries (or the encoder output), independent of any target."""
        x, self_pad = self.extract_features(encoder_out, glance_tokens)
        logits = self.output_projection(x)  # B x N x V
        return logits, {"attn": None, "padding_mask": self_pad}

    def extract_features(self, encoder_out: Dict[str, List[Tensor]], glance_tokens: Optional[Tensor] = None):
        """The last hidden states (B x N x d) and the positions' padding mask (B x N or None).
        ``glance_tokens`` (B x N; ``<pad>`` = keep the query): tokens shown at some query positions
        instead of the query (glancing training, ``criterions/glancing.py``, and the refinement
        passes of ``--ctc-refine-passes``), embedded with the (tied) output embedding, scaled by
        sqrt(d) as the AR decoder's inputs."""
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
        return x.transpose(0, 1), self_pad

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        logits = net_output[0].float()
        return torch.log_softmax(logits, -1) if log_probs else torch.softmax(logits, -1)

    def max_positions(self):
        return self.embed_positions.num_embeddings
