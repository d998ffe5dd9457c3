"""NARVL decoding (Section 3): one decoder pass over the N queries, then CTC collapse.

``--generator ctc`` (options: ``options.CTCOptions``):

- greedy (default, ``--ctc-beam 1``): argmax per query, then B: merge adjacent repeats,
  drop ``<blank>`` (``collapse``).  Batched: one encoder pass and one decoder pass per
  batch; the collapse is a mask over the B x N argmax matrix.
- ``--ctc-beam K > 1`` (Table 11): CTC prefix beam search (``prefix_beam_search``),
  summing the probabilities of all alignments of a prefix (blank-ending and
  non-blank-ending), K prefixes kept per query, candidates per query limited to the
  K most probable symbols.
- ``--ctc-no-merge``: drop blanks but keep repeats (the ``--loss ce`` ablation, Table 8).
- ``--ctc-refine-passes K`` (hybrid decoding, not in the paper; ``refine``): the one-pass draft
  is refined by K more passes of the same decoder; pass k shows the ⌊N·f·k/K⌋ (f =
  ``--ctc-refine-show``, default 1/2) most confident
  draft frames (their argmax token, a word or ``<blank>``) in place of their queries, as glancing
  training (``--glat-ratio``) shows aligned tokens, and re-predicts the other frames; shown frames
  keep their token.  Then the collapse (or the prefix beam search) as above.  K = 0 is CTC.
- grounding (``--vl-task grounding``): exactly four coordinates, by
  ``data.boxes.decode_box_ctc`` over the bin symbols (robust to CTC merging equal
  neighbours and to non-bin argmaxes).

Symbols that are never output: the banned symbols of ``base.banned_symbols`` and </s>
(appended), <blank> by the collapse.  Hypotheses end with </s> like fairseq's.
"""
import math
from typing import Dict, List

import torch
from torch import Tensor

from . import register_generator
from .base import CaptionGenerator
from .options import CTCOptions
from ..errors import GeneratorError


def collapse(tokens: Tensor, blank: int, merge_repeats: bool = True) -> List[List[int]]:
    """B x N argmax tokens → per row the collapsed sequence B(a): merge adjacent
    repeats, then drop blanks ("a a _ a" → "a a"; "a _ _ b b" → "a b")."""
    keep = tokens.ne(blank)
    if merge_repeats:
        keep[:, 1:] &= tokens[:, 1:].ne(tokens[:, :-1])
    return [row[k].tolist() for row, k in zip(tokens, keep)]


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def prefix_beam_search(lprobs: Tensor, blank: int, beam: int) -> List[tuple]:
    """CTC prefix beam search over N x V log-probs → [(prefix tuple, log p)] best first.
    log p(prefix) = logaddexp(p_blank_end, p_nonblank_end) over all alignments."""
    beams = {(): (0.0, -math.inf)}  # prefix → (log p ending in blank, log p ending in non-blank)
    for t in range(lprobs.size(0)):
        row = lprobs[t]
        top = torch.topk(row, min(beam, row.numel())).indices.tolist()
        if blank not in top:
            top.append(blank)
        nxt: Dict[tuple, list] = {}

        def add(prefix, pb, pnb):
            if pb == -math.inf and pnb == -math.inf:
                return  # no alignment reaches this prefix (e.g. a repeat without a blank between)
            cur = nxt.setdefault(prefix, [-math.inf, -math.inf])
            cur[0], cur[1] = _logaddexp(cur[0], pb), _logaddexp(cur[1], pnb)

        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            for s in top:
                p = float(row[s])
                if p == -math.inf:
                    continue
                if s == blank:
                    add(prefix, total + p, -math.inf)
                elif prefix and prefix[-1] == s:
                    add(prefix, -math.inf, pnb + p)  # repeat merged into the same symbol
                    add(prefix + (s,), -math.inf, pb + p)  # a new symbol after a blank
                else:
                    add(prefix + (s,), -math.inf, total + p)
        beams = dict(sorted(nxt.items(), key=lambda kv: -_logaddexp(*kv[1]))[:beam])
    return sorted(((p, _logaddexp(*v)) for p, v in beams.items()), key=lambda x: -x[1])


class CTCGenerator(CaptionGenerator):
    options_cls = CTCOptions
    requires = ("forward_decoder", "num_output_positions")
    model_hint = "a NARVL model, --arch narvl* or narvl_features*"

    def __init__(self, models, dictionary, options: CTCOptions, args=None, context=None, **frame):
        super().__init__(models, dictionary, options, args, context, **frame)  # allow_unk, dedup
        self.blank = dictionary.index("<blank>")
        self.beam, self.merge = options.ctc_beam, not options.ctc_no_merge
        self.refine_passes, self.refine_show = options.ctc_refine_passes, options.ctc_refine_show
        # one output per query: the banned symbols and </s> (appended) never; <blank> is collapsed away
        self.never = torch.tensor(sorted((set(self.banned) | {self.eos}) - {self.blank}), dtype=torch.long)
        self.bin_ids = None
        if self.context.box_symbols is not None:  # grounding: exactly four <bin_i>
            self.bin_ids = torch.tensor(self.context.box_symbols, dtype=torch.long)

    def decode(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        lprobs, pad_mask = self.model.forward_decoder(encoder_out)  # one decoder pass: B x N x V
        lprobs = self.ruled(lprobs)
        if self.refine_passes:
            lprobs = self.refine(lprobs, pad_mask, encoder_out)
        rows = [lprobs[i] if pad_mask is None else lprobs[i][~pad_mask[i]] for i in range(lprobs.size(0))]
        if self.bin_ids is not None:
            from ..data.boxes import decode_box_ctc
            return [[self._hypo([int(self.bin_ids[b]) for b in decode_box_ctc(lp.cpu(), self.bin_ids, self.blank)],
                                0.0)] for lp in rows]
        if self.beam == 1:
            best, arg = lprobs.max(-1)  # B x N
            if pad_mask is not None:
                arg = arg.masked_fill(pad_mask, self.blank)
                best = best.masked_fill(pad_mask, 0.0)
            return [[self._hypo(toks, s)] for toks, s in zip(collapse(arg.cpu(), self.blank, self.merge),
                                                               best.sum(1).tolist())]
        return [[self._hypo(list(p), s) for p, s in prefix_beam_search(lp.cpu(), self.blank, self.beam)]
                for lp in rows]

    def ruled(self, lprobs: Tensor) -> Tensor:
        lprobs = lprobs.float()
        lprobs[:, :, self.never.to(lprobs.device)] = -math.inf
        return lprobs

    def refine(self, lprobs: Tensor, pad_mask, encoder_out) -> Tensor:
        """``--ctc-refine-passes``: K passes over the draft (module docstring).  Returns the
        final B x N x V log-probs: a shown frame is certain of its token."""
        if pad_mask is not None:
            raise GeneratorError("--ctc-refine-passes needs learnable queries (--decoder-input query)")
        conf, tokens = lprobs.max(-1)  # B x N
        n = lprobs.size(1)
        shown = torch.zeros_like(tokens, dtype=torch.bool)
        for k in range(1, self.refine_passes + 1):
            count = int(n * self.refine_show * k / self.refine_passes)
            # ties broken by frame index (stable sort): the choice is batch-invariant
            order = torch.sort(conf, dim=1, descending=True, stable=True).indices[:, :count]
            shown = torch.zeros_like(shown).scatter_(1, order, True)
            new, _ = self.model.forward_decoder(encoder_out, glance_tokens=tokens.masked_fill(~shown, self.pad))
            new = self.ruled(new)
            new_conf, new_tokens = new.max(-1)
            tokens = torch.where(shown, tokens, new_tokens)
            conf = torch.where(shown, conf, new_conf)
            certain = torch.full_like(new, -math.inf).scatter_(2, tokens.unsqueeze(-1), 0.0)
            lprobs = torch.where(shown.unsqueeze(-1), certain, new)
        return lprobs

    def _hypo(self, tokens: List[int], score: float) -> Dict[str, Tensor]:
        """CTC scores a whole alignment: each token gets the mean share of its log-probability."""
        return self.hypothesis(tokens, torch.full((len(tokens),), score / (len(tokens) + 1)), score,
                               eos_score=score / (len(tokens) + 1))


register_generator("ctc")(CTCGenerator)
