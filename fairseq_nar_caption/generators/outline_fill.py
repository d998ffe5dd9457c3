"""SAIC decoding (Fei et al., Section 4.3): Outliner beam search, one Filler pass,
Eq. 10 ranking.  ``--generator outline-fill``; options ``--outline-beam`` (M_out)
and ``--fill-beam`` (M_fill ≤ M_out).

Per batch:

1. the encoder runs once;
2. Outliner: fairseq's own ``SequenceGenerator`` beam search (beam M_out) over the
   group heads, starting from </s> (fairseq's start symbol, the paper's [bog]) until
   </s>, with cached keys/values: step i runs one token at position i·k, so the
   loop is k times shorter than AR decoding.  The fairseq-generate options that
   shape a beam search apply to it (``--lenpen``, ``--unnormalized``, ``--unkpen``,
   ``--temperature``, ``--min-len``), and ``--max-len-a/b`` bound the caption words,
   hence ⌈·/k⌉ outlined words; with ``--sampling`` (``--sampling-topk/topp``) the M_out
   outlines are sampled (fairseq's ``search.Sampling``) instead of searched;
3. Filler: the top M_fill outlines of every item (in the beam's order) become
   [z_0, <mask>×(k−1), …, z_{m-1}, <mask>×(k−1), </s>] and one pass replaces every
   <mask> by its most probable word (never a banned symbol, ``base.banned_symbols``; </s>
   is allowed: it ends the caption inside the last group);
4. each candidate is truncated at its first </s> and scored by Eq. 10:
   Σ Outliner log-probs (the m words and the final </s>) + Σ Filler log-probs
   (all m·(k−1) slots, as Eq. 10 writes it, also those after the truncation
   point); candidates are returned best first.

With k = 1 there is nothing to fill: the result is the Outliner's beam search,
i.e. fairseq's AR beam search of the same weights (tested against ``ar_caption``
with M_fill = 1; with M_fill > 1 Eq. 10 re-ranks the M_fill best by their
unnormalised log-probability).
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from fairseq import search
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import GeneratorError
from ..models.saic import filler_layout, filler_slots
from .base import CaptionGenerator, RuledSequenceGenerator, _BannedSymbolsEnsemble, force_words
from .registry import register_generator



@dataclass
class OutlineFillOptions(FairseqDataclass):
    """SAIC (generators/outline_fill.py): outline-fill."""
    outline_beam: int = field(default=5, metadata={"help": "M_out: Outliner beam size"})
    fill_beam: int = field(default=1, metadata={"help": "M_fill <= M_out: top Outliner hypotheses the Filler "
                                                        "completes (ranked by Eq. 10)"})

    def validate(self):
        if not 1 <= self.fill_beam <= self.outline_beam:
            raise GeneratorError(f"need M_out >= M_fill >= 1 (SAIC Section 4.3), got --outline-beam "
                                 f"{self.outline_beam} --fill-beam {self.fill_beam}")


class _GivenEncoderOut(_BannedSymbolsEnsemble):
    """fairseq's model wrapper for beam search, with the encoder output computed by the
    caller (once per batch, shared with the Filler pass)."""

    encoder_out = None

    def forward_encoder(self, net_input):
        return [self.encoder_out]


class OutlineFillGenerator(CaptionGenerator):
    """SAIC's decoding: the Outliner's beam search over group heads, then one Filler pass."""

    def __init__(self, models, dictionary, options: OutlineFillOptions, args=None, context=None, **frame):
        super().__init__(models, dictionary, options, args, context, **frame)  # allow_unk, dedup
        self.m_out, self.m_fill = options.outline_beam, options.fill_beam
        self.k = k = self.model.group_size
        self.mask = dictionary.index("<mask>")
        self.ensemble = _GivenEncoderOut([self.model])
        sampling = getattr(args, "sampling", False)
        self.outliner = RuledSequenceGenerator(
            self.ensemble, dictionary, banned=self.banned, beam_size=self.m_out,
            max_len_a=args.max_len_a / k, max_len_b=math.ceil(args.max_len_b / k), min_len=math.ceil(args.min_len / k),
            # heads at positions 0, k, …, m·k must fit the decoder: at most ⌊(P−1)/k⌋ words + </s>
            max_len=(self.model.decoder.max_positions() - 1) // k + 1,
            normalize_scores=not args.unnormalized, len_penalty=args.lenpen, unk_penalty=args.unkpen,
            temperature=args.temperature,
            search_strategy=search.Sampling(dictionary, args.sampling_topk, args.sampling_topp) if sampling else None)

    def outline(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        """Stage I: fairseq's beam search over the group heads (M_out best per item)."""
        self.ensemble.encoder_out = encoder_out
        try:
            return self.outliner.generate([self.model], sample)
        finally:
            self.ensemble.encoder_out = None

    def fill(self, heads: List[Tensor], encoder_out) -> List[Dict[str, Tensor]]:
        """Stage II for outlines ``heads`` (each z_0..z_{m-1}, </s>; encoder rows aligned):
        one Filler pass; per outline the filled tokens (up to the first </s>, which is
        kept), the log-prob of every slot (0 at outlined words) and the Filler's Eq. 10 term."""
        batch = torch.full((len(heads), max(len(h) for h in heads)), self.pad, dtype=torch.long,
                           device=heads[0].device)
        for i, h in enumerate(heads):
            batch[i, : len(h)] = h
        tokens = filler_layout(batch, self.k, self.mask, self.pad)
        slots = filler_slots(tokens, self.k, self.pad)
        if slots.any():
            lprobs = F.log_softmax(self.model.forward_filler(tokens, encoder_out).float(), dim=-1)
            lprobs[..., self.banned] = -math.inf  # </s> allowed: it ends the caption inside the last group
            best, words = lprobs.max(-1)
            tokens = torch.where(slots, words, tokens)
        else:  # k = 1: nothing to fill
            best = torch.zeros(tokens.shape, device=tokens.device)
        out = []
        for i, h in enumerate(heads):
            n = (len(h) - 1) * self.k  # filled positions before the final </s>
            row = tokens[i, : n + 1]
            end = int(row.eq(self.eos).nonzero()[0])  # first </s> (position n at the latest)
            out.append({"tokens": row[: end + 1], "slot_lprobs": best[i, : n + 1],
                        "filler_score": best[i][slots[i]].sum()})
        return out

    def decode(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        model = self.model
        outlines = [hyps[: self.m_fill] for hyps in self.outline(sample, encoder_out)]
        rows = torch.tensor([b for b, hyps in enumerate(outlines) for _ in hyps],
                            device=encoder_out["encoder_out"][0].device)
        flat = [h for hyps in outlines for h in hyps]
        filled = self.fill([h["tokens"] for h in flat], model.encoder.reorder_encoder_out(encoder_out, rows))
        results: List[List[Dict[str, Tensor]]] = [[] for _ in outlines]
        for b, hypo, f in zip(rows.tolist(), flat, filled):
            outline_lprobs = hypo["positional_scores"]
            # per kept token: the Outliner's log-prob at heads (i·k), the Filler's at slots
            scores = f["slot_lprobs"].clone()
            scores[::self.k] = outline_lprobs.to(scores)
            n = len(f["tokens"])  # words + </s>
            results[b].append(self.hypothesis(f["tokens"][: n - 1], scores[: n - 1],
                                              float(outline_lprobs.sum() + f["filler_score"]),  # Eq. 10
                                              eos_score=float(scores[n - 1])))
        for hyps in results:
            hyps.sort(key=lambda h: -h["score"])  # stable: ties keep the Outliner's order
        return results


register_generator("outline-fill", options=OutlineFillOptions, models=("saic",), forced_length=force_words,
                   help="SAIC: the Outliner's beam search over group heads, then one Filler pass")(OutlineFillGenerator)
