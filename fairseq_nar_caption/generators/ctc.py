"""NARVL decoding (Section 3): one decoder pass over the N queries, then CTC collapse.

``--generator ctc`` (the vision_language task's options):

- greedy (default, ``--ctc-beam 1``): argmax per query, then B: merge adjacent repeats,
  drop ``<blank>`` (``collapse``).  Batched: one encoder pass and one decoder pass per
  batch; the collapse is a mask over the B x N argmax matrix.
- ``--ctc-beam K > 1`` (Table 11): CTC prefix beam search (``prefix_beam_search``),
  summing the probabilities of all alignments of a prefix (blank-ending and
  non-blank-ending), K prefixes kept per query, candidates per query limited to the
  K most probable symbols.
- ``--ctc-no-merge``: drop blanks but keep repeats (the ``--loss ce`` ablation, Table 8).
- grounding (``--vl-task grounding``): exactly four coordinates, by
  ``data.boxes.decode_box_ctc`` over the bin symbols (robust to CTC merging equal
  neighbours and to non-bin argmaxes).

Symbols that are never output: <s>, <pad>, </s>, <unk>, <mask>, <vis> (and <blank>, by
the collapse).  Hypotheses end with </s> like fairseq's.
"""
import math
from typing import Dict, List

import torch
from torch import Tensor

from . import register_generator


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


@register_generator("ctc")
class CTCGenerator:
    def __init__(self, task, models, args):
        if len(models) != 1:
            raise ValueError(f"--generator ctc decodes with one model, got an ensemble of {len(models)}")
        self.model = models[0]
        if not hasattr(self.model, "forward_decoder") or not hasattr(self.model, "num_output_positions"):
            raise ValueError(f"--generator ctc needs a NARVL model (--arch narvl*), got {type(self.model).__name__}")
        d = task.target_dictionary
        self.dictionary = d
        self.blank, self.eos = d.index("<blank>"), d.eos()
        self.beam = getattr(task.cfg, "ctc_beam", 1)
        self.merge = not getattr(task.cfg, "ctc_no_merge", False)
        if self.beam < 1:
            raise ValueError(f"--ctc-beam must be >= 1, got {self.beam}")
        never = [d.bos(), d.pad(), d.eos(), d.unk()] + [d.index(s) for s in ("<mask>", "<vis>") if s in d.indices]
        self.never = torch.tensor(sorted(set(never)), dtype=torch.long)
        self.grounding = getattr(task.cfg, "vl_task", None) == "grounding"
        if self.grounding:
            self.bin_ids = torch.tensor(task.bin_token_ids(), dtype=torch.long)
        self.symbols_to_strip_from_output = {self.eos}

    def _hypo(self, tokens: List[int], lprobs: Tensor, score: float) -> Dict[str, Tensor]:
        toks = torch.tensor(tokens + [self.eos], dtype=torch.long)
        return {"tokens": toks, "score": torch.tensor(score), "positional_scores": torch.full((len(toks),), score / len(toks)),
                "alignment": None, "attention": None}

    @torch.no_grad()
    def generate(self, models, sample, **kwargs) -> List[List[Dict[str, Tensor]]]:
        encoder_out = self.model.forward_encoder(sample["net_input"])  # once per batch
        lprobs, pad_mask = self.model.forward_decoder(encoder_out)  # one decoder pass: B x N x V
        lprobs = lprobs.float()
        lprobs[:, :, self.never.to(lprobs.device)] = -math.inf
        out = []
        if self.grounding:
            from ..data.boxes import decode_box_ctc
            for i in range(lprobs.size(0)):
                lp = lprobs[i] if pad_mask is None else lprobs[i][~pad_mask[i]]
                bins = decode_box_ctc(lp.cpu(), self.bin_ids, self.blank)
                toks = [int(self.bin_ids[b]) for b in bins]
                out.append([self._hypo(toks, lp, 0.0)])
            return out
        if self.beam == 1:
            best, arg = lprobs.max(-1)  # B x N
            if pad_mask is not None:
                arg = arg.masked_fill(pad_mask, self.blank)
                best = best.masked_fill(pad_mask, 0.0)
            scores = best.sum(1).tolist()
            for toks, s, row in zip(collapse(arg.cpu(), self.blank, self.merge), scores, lprobs):
                out.append([self._hypo(toks, row, s)])
            return out
        for i in range(lprobs.size(0)):
            lp = (lprobs[i] if pad_mask is None else lprobs[i][~pad_mask[i]]).cpu()
            out.append([self._hypo(list(p), lp, s) for p, s in prefix_beam_search(lp, self.blank, self.beam)])
        return out
