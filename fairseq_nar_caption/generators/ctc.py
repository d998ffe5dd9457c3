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
  ``decode_box_ctc`` (below) over the bin symbols (robust to CTC merging equal
  neighbours and to non-bin argmaxes).

Symbols that are never output: the banned symbols of ``base.banned_symbols`` and </s>
(appended), <blank> by the collapse.  Hypotheses end with </s> like fairseq's.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import GeneratorError
from .base import CaptionGenerator
from .registry import register_generator


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



@dataclass
class CTCOptions(FairseqDataclass):
    """NARVL (generators/ctc.py): ctc."""
    ctc_beam: int = field(default=1, metadata={"help": "1 = argmax + collapse; K > 1 = CTC prefix beam search "
                                                       "(NARVL Table 11)"})
    ctc_no_merge: bool = field(default=False, metadata={"help": "drop blanks but keep repeats (for the "
                                                                "--loss ce ablation)"})
    ctc_refine_passes: int = field(
        default=0, metadata={"help": "hybrid decoding (not in the paper): K further decoder passes, pass k showing "
                                     "the k/K · --ctc-refine-show most confident frames of the draft in place of "
                                     "their queries (a model trained with --glat-ratio); 0 = one-pass CTC"})
    ctc_refine_show: float = field(
        default=0.5, metadata={"help": "fraction of the N frames the last refinement pass shows"})

    def validate(self):
        if self.ctc_beam < 1:
            raise GeneratorError(f"--ctc-beam must be >= 1, got {self.ctc_beam}")
        if self.ctc_refine_passes < 0:
            raise GeneratorError(f"--ctc-refine-passes must be >= 0, got {self.ctc_refine_passes}")
        if not 0 < self.ctc_refine_show <= 1:
            raise GeneratorError(f"--ctc-refine-show must be in (0, 1], got {self.ctc_refine_show}")


class CTCGenerator(CaptionGenerator):
    """NARVL's decoding: one query-decoder pass, then CTC collapse (or prefix beam search)."""

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


def decode_box_ctc(lprobs: torch.Tensor, bin_ids: torch.Tensor, blank: int,
                   extra_blank_ids: Sequence[int] = ()) -> List[int]:
    """Exactly four bin indices from the N query outputs of one sample.

    Args:
        lprobs: ``(N, V)`` log-probabilities per query (frame).
        bin_ids: ``(num_bins,)`` LongTensor, ``bin_ids[i]`` = token id of ``<bin_i>``.
        blank: token id of the CTC blank.
        extra_blank_ids: optional token ids (e.g. EOS) that may also fill frames
            outside the spans: such a frame then scores max(blank, those) instead of
            the blank alone.  Default: the blank only.

    The decoded box is the best alignment of four ordered, non-overlapping,
    contiguous frame spans ``[s1, e1) < [s2, e2) < [s3, e3) < [s4, e4)``; frames
    outside every span count as blank (scored with the blank log-prob), the frames
    of span j all carry one label k_j (scored with the sum of ``lprobs[t, bin_ids[k_j]]``
    over the span, k_j the best bin for that span).  Unlike a CTC path, two adjacent
    spans may carry the same label without a blank between them: an argmax-collapse
    decode of ``<bin_5> <bin_5> <bin_9> <bin_2>`` gives three coordinates, this gives
    four (5, 5, 9, 2).  Returns ``[k_1, k_2, k_3, k_4]``.

    Dynamic programme (O(N^2 num_bins) for the span table, vectorised over bins,
    then O(4 N^2)):  F[j][t] = best score of frames [0, t) holding j complete spans,
    F[0][t] = sum of blank scores of [0, t),
    F[j][t] = max(F[j][t-1] + blank[t-1], max_{s < t} F[j-1][s] + span(s, t)).
    The answer is F[4][N].  Ties go to the earliest span start and the lowest bin.
    """
    if not isinstance(lprobs, torch.Tensor) or lprobs.dim() != 2:
        raise ValueError(f"lprobs must be a (N, V) tensor of log-probabilities, got "
                         f"{getattr(lprobs, 'shape', type(lprobs).__name__)}")
    n, vocab = lprobs.shape
    if n < 4:
        raise ValueError(f"decode_box_ctc needs at least 4 query outputs to place 4 coordinates, got N={n}")
    bin_ids = torch.as_tensor(bin_ids, dtype=torch.long).reshape(-1)
    if bin_ids.numel() == 0 or int(bin_ids.min()) < 0 or int(bin_ids.max()) >= vocab:
        raise ValueError(f"bin_ids must be non-empty token ids in [0, {vocab})")
    if not 0 <= blank < vocab:
        raise ValueError(f"blank id {blank} is outside the vocabulary of size {vocab}")
    if bool((bin_ids == blank).any()):
        raise ValueError(f"blank id {blank} is also listed as a bin id")
    extra_blank_ids = [int(i) for i in extra_blank_ids]
    bad = [i for i in extra_blank_ids if not 0 <= i < vocab or bool((bin_ids == i).any())]
    if bad:
        raise ValueError(f"extra_blank_ids {bad} are outside the vocabulary of size {vocab} or are bin ids")

    lp = lprobs.detach().to("cpu", torch.float64)
    if bool(torch.isnan(lp).any()):
        raise ValueError("lprobs contain NaN")
    fill = lp[:, [blank, *extra_blank_ids]].max(dim=1).values  # (N,) score of a frame outside the spans
    bins_lp = lp[:, bin_ids]  # (N, B)
    # span[s][e] = best label score of frames [s, e), label[s][e] its bin.  Running sums from each
    # start s (never a difference of prefix sums: masked -inf entries would give -inf - -inf = NaN,
    # and large magnitudes would cancel the small ones).
    span = [[float("-inf")] * (n + 1) for _ in range(n + 1)]
    label = [[0] * (n + 1) for _ in range(n + 1)]
    for s in range(n):
        best, arg = bins_lp[s:].cumsum(0).max(dim=1)  # row k: frames [s, s + k + 1)
        span[s][s + 1:] = best.tolist()
        label[s][s + 1:] = arg.tolist()
    cum_fill = torch.cat([torch.zeros(1, dtype=torch.float64), fill.cumsum(0)])

    neg = float("-inf")
    f = [cum_fill.tolist()]  # F[0][t]
    back = [None]  # back[j][t] = span start s (span ends at t) or -1 (frame t-1 is blank)
    span_l = span
    fill_l = fill.tolist()
    for j in range(1, 5):
        prev, cur, bk = f[j - 1], [neg] * (n + 1), [-1] * (n + 1)
        for t in range(j, n + 1):  # j spans need at least j frames
            best, arg = (cur[t - 1] + fill_l[t - 1], -1) if t - 1 >= j else (neg, -1)
            for s in range(j - 1, t):
                v = prev[s] + span_l[s][t]
                if v > best:
                    best, arg = v, s
            cur[t], bk[t] = best, arg
        f.append(cur)
        back.append(bk)

    if f[4][n] == neg:
        raise ValueError("no finite-scoring placement of 4 coordinates (every alignment has a -inf frame)")
    labels: List[int] = []
    t = n
    for j in range(4, 0, -1):
        while back[j][t] == -1:
            t -= 1
        s = back[j][t]
        labels.append(int(label[s][t]))
        t = s
    return labels[::-1]


register_generator("ctc", options=CTCOptions, models=("narvl", "narvl_features"),
                   help="NARVL: one pass of the query decoder, CTC collapse")(CTCGenerator)
