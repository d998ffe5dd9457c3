"""NACF decoding (Yang et al., AAAI 2021): MP, EF, L2R and their coarse-to-fine
CT- variants, with a length beam and optional AR-B teacher rescoring.

Per batch: the encoder runs once; the top-B predicted lengths of each item are
decoded in parallel as B rows of one batch (the encoder output is repeated, not
recomputed); every iteration is one bidirectional decoder pass over all rows.

- CT- (Eq. 9-10): a first pass on an all-<vis> input gives the template Y(0);
  its non-<mask> predictions (the visual words) are the initial observed set.
  Without CT- the observed set starts empty (all <mask>).
- MP (Eq. 11-14): T passes; each predicts the unobserved positions, then keeps the
  N − m_{t+1} most confident tokens, m_{t+1} = max(⌊N·(T−t)/T⌋, 1).
- EF (Eq. 15) / L2R (Eq. 17): each pass predicts the unobserved positions and fixes
  the q most confident / the q leftmost of them, until none is left
  (⌈(N−u)/q⌉ passes).  With CT-, one more pass re-predicts the template's visual
  words given everything else (Eq. 16; ``--nar-skip-template-revisit`` skips it).
- ``--nar-remask-repeats`` (MP only; not in the papers): between passes, of every two adjacent
  positions holding the same word the less confident one (ties: the right one) joins the
  positions re-predicted next, whatever its confidence, so the next pass sees its neighbour.
- Length beam: the B most probable lengths in [--nar-min-length, N_max); the
  winner maximises Σ_n log p_NAR(y_n) [+ log p_AR(y_n | y_<n)] / N^α, the AR term
  when ``--teacher-path`` names an AR-B checkpoint (as the reference code does),
  NAR confidence alone otherwise.
Ties (equal confidences) go to the lower position index, so decoding an item
alone or in a batch gives the same caption.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import GeneratorError
from .base import CaptionGenerator
from .registry import register_generator

ALGORITHMS = ("mp", "ef", "l2r")



@dataclass
class MaskPredictOptions(FairseqDataclass):
    """NACF (generators/mask_predict.py): mp, ef, l2r, ct-mp, ct-ef, ct-l2r."""
    nar_iterations: int = field(default=5, metadata={"help": "T: decoder passes of MP (Eq. 14)"})
    nar_q: int = field(default=1, metadata={"help": "q: tokens fixed per pass by EF/L2R (Eq. 15, 17)"})
    length_beam: int = field(default=6, metadata={"help": "B: most probable lengths decoded in parallel"})
    nar_min_length: int = field(default=1, metadata={"help": "shortest caption length the length beam considers"})
    nar_max_length: int = field(default=0, metadata={"help": "longest caption length the length beam considers "
                                                             "(0 = the model's range; min = max forces a length)"})
    nar_skip_template_revisit: bool = field(
        default=False, metadata={"help": "CT-EF/CT-L2R: skip the last pass re-predicting template words (Eq. 16)"})
    nar_remask_repeats: bool = field(
        default=False, metadata={"help": "MP: between passes, also re-predict the less confident of two adjacent "
                                         "equal words"})
    length_norm_alpha: float = field(default=1.0, metadata={"help": "α in [0, 2]: candidates ranked by score / N^α"})
    teacher_path: Optional[str] = field(
        default=None, metadata={"help": "AR-B checkpoint rescoring the length candidates (p_NAR·p_AR)"})

    def validate(self):
        for name in ("nar_iterations", "nar_q", "length_beam", "nar_min_length"):
            if getattr(self, name) < 1:
                raise GeneratorError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.nar_max_length and self.nar_max_length < self.nar_min_length:
            raise GeneratorError(f"--nar-max-length {self.nar_max_length} is below --nar-min-length "
                                 f"{self.nar_min_length}")
        if not 0 <= self.length_norm_alpha <= 2:
            raise GeneratorError(f"--length-norm-alpha must be in [0, 2], got {self.length_norm_alpha}")


class MaskPredictGenerator(CaptionGenerator):
    algorithm, coarse_to_fine = "mp", False  # set per registered name

    def __init__(self, models, dictionary, options: MaskPredictOptions, args=None, context=None, **frame):
        super().__init__(models, dictionary, options, args, context, **frame)  # allow_unk, dedup
        self.iterations, self.q, self.length_beam = options.nar_iterations, options.nar_q, options.length_beam
        self.revisit_template = not options.nar_skip_template_revisit
        self.remask_repeats = options.nar_remask_repeats
        if self.remask_repeats and self.algorithm != "mp":
            raise GeneratorError(f"--nar-remask-repeats works with mp / ct-mp, not {self.algorithm}")
        self.alpha, self.min_len, self.max_len = options.length_norm_alpha, options.nar_min_length, \
            options.nar_max_length
        d = dictionary
        self.mask, self.vis = d.index("<mask>"), d.index("<vis>")
        # inside a caption of fixed length N, </s> is banned too; the template pass may emit <mask> (Eq. 9)
        self.not_words = sorted(set(self.banned) | {self.eos})
        self.teacher = self._load_teacher(options.teacher_path) if options.teacher_path else None
        self.trace: Optional[List[Dict[str, Tensor]]] = None  # set to [] to record the observed sets per pass

    def _load_teacher(self, path):
        if self.context.load_model is None:
            raise GeneratorError(f"--teacher-path {path}: this task cannot load a teacher checkpoint")
        teacher = self.context.load_model(path).eval()
        if not hasattr(teacher.decoder, "extract_features"):
            raise GeneratorError(f"{path}: the teacher must be an autoregressive caption model (ar_caption)")
        return teacher

    # --------------------------------------------------------------- one decoder pass
    def _predict(self, tokens: Tensor, encoder_out, allow_mask: bool = False):
        """Argmax word and its log-probability at every position (Eq. 9 / 11)."""
        lprobs = F.log_softmax(self.model.forward_decoder_nar(tokens, encoder_out).float(), dim=-1)
        banned = [i for i in self.not_words if not (allow_mask and i == self.mask)]
        lprobs[..., banned] = -math.inf
        scores, words = lprobs.max(-1)
        return words, scores

    def _record(self, **state):
        if self.trace is not None:
            self.trace.append({k: v.clone() for k, v in state.items()})

    # --------------------------------------------------------------- decoding
    def decode(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        model = self.model
        bsz = sample["net_input"]["features"].size(0)

        # length beam: top-B lengths per item from the predicted distribution (Eq. 2)
        length_lprobs = model.forward_length(encoder_out).float()
        n_max = length_lprobs.size(1)
        if self.min_len >= n_max:
            raise GeneratorError(f"--nar-min-length {self.min_len} leaves no length: the model predicts lengths "
                                 f"0..{n_max - 1}")
        positions = torch.arange(n_max, device=length_lprobs.device)
        allowed = positions >= max(self.min_len, 1)
        if self.max_len:
            allowed &= positions <= self.max_len
        length_lprobs = length_lprobs.masked_fill(~allowed, -math.inf)
        beam = min(self.length_beam, int(allowed.sum()))
        lengths = length_lprobs.topk(beam, dim=1).indices.view(-1)  # (bsz*B), item-major
        rows = torch.arange(bsz, device=lengths.device).repeat_interleave(beam)
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, rows)

        width = int(lengths.max())
        valid = torch.arange(width, device=lengths.device)[None] < lengths[:, None]
        tokens = torch.full_like(valid, self.mask, dtype=torch.long).masked_fill(~valid, self.pad)
        scores = torch.full(valid.shape, -math.inf, device=valid.device)
        observed = torch.zeros_like(valid)
        template = torch.zeros_like(valid)
        if self.coarse_to_fine:  # Eq. 9-10
            y0, c0 = self._predict(tokens.masked_fill(valid, self.vis), encoder_out, allow_mask=True)
            template = valid & y0.ne(self.mask)
            tokens = torch.where(template, y0, tokens)
            scores = torch.where(template, c0, scores)
            observed = template.clone()
        self._record(observed=observed, tokens=tokens)

        if self.algorithm == "mp":
            tokens, scores = self._mask_predict(tokens, scores, observed, valid, lengths, encoder_out)
        else:
            tokens, scores = self._fix_q_per_pass(tokens, scores, observed, valid, encoder_out)
            if self.coarse_to_fine and self.revisit_template and template.any():  # Eq. 16
                words, s = self._predict(tokens.masked_fill(template, self.mask), encoder_out)
                tokens, scores = torch.where(template, words, tokens), torch.where(template, s, scores)
                self._record(observed=valid & ~template, tokens=tokens)
        return self._select(tokens, scores, valid, lengths, rows, bsz, beam, encoder_out, sample)

    def _mask_predict(self, tokens, scores, observed, valid, lengths, encoder_out):
        T = self.iterations
        for t in range(1, T + 1):
            words, s = self._predict(tokens.masked_fill(valid & ~observed, self.mask), encoder_out)
            update = valid & ~observed  # I_t, Eq. 12; Eq. 11
            tokens, scores = torch.where(update, words, tokens), torch.where(update, s, scores)
            if t == T:
                break
            m_next = torch.clamp((lengths * (T - t)) // T, min=1)  # Eq. 14 with r = (T-(t+1)+1)/T
            observed = self._top(scores, valid, lengths - m_next)  # Eq. 13
            if self.remask_repeats:
                observed = observed & ~self._lesser_of_repeats(tokens, scores, valid)
            self._record(observed=observed, tokens=tokens)
        return tokens, scores

    def _fix_q_per_pass(self, tokens, scores, observed, valid, encoder_out):
        # the number of passes, read once per batch (no per-pass wait on the device): q tokens per pass
        passes = -(-int((valid & ~observed).sum(1).max()) // self.q)
        for _ in range(passes):
            todo = valid & ~observed
            words, s = self._predict(tokens.masked_fill(todo, self.mask), encoder_out)
            tokens, scores = torch.where(todo, words, tokens), torch.where(todo, s, scores)
            if self.algorithm == "ef":  # Eq. 15: the q most confident unobserved tokens
                key = scores.masked_fill(~todo, -math.inf)
            else:  # L2R, Eq. 17: the q leftmost unobserved tokens
                pos = torch.arange(todo.size(1), device=todo.device, dtype=torch.float)
                key = (-pos).expand_as(scores).masked_fill(~todo, -math.inf)
            k = torch.clamp(todo.sum(1), max=self.q)
            observed = observed | (self._top(key, todo, k) & todo)
            self._record(observed=observed, tokens=tokens)
        return tokens, scores

    @staticmethod
    def _lesser_of_repeats(tokens: Tensor, scores: Tensor, valid: Tensor) -> Tensor:
        """Of every two adjacent valid positions holding the same word, the less confident (ties: the right)."""
        same = valid[:, 1:] & valid[:, :-1] & tokens[:, 1:].eq(tokens[:, :-1])
        right = same & scores[:, 1:].le(scores[:, :-1])
        lesser = torch.zeros_like(valid)
        lesser[:, 1:] |= right
        lesser[:, :-1] |= same & ~right
        return lesser

    @staticmethod
    def _top(key: Tensor, allowed: Tensor, k: Tensor) -> Tensor:
        """Per row, the k[row] highest keys among allowed positions; ties → lower index."""
        n = key.size(1)
        # stable sort on the negated key: descending, equal keys in position order
        order = torch.argsort(-key.masked_fill(~allowed, -math.inf), dim=1, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(n, device=key.device).expand_as(order))
        return (ranks < k[:, None]) & allowed

    def _select(self, tokens, scores, valid, lengths, rows, bsz, beam, encoder_out, sample):
        nar = scores.masked_fill(~valid, 0)
        total = nar.sum(1)
        if self.teacher is not None:
            total = total + self._teacher_scores(tokens, valid, sample, rows)
        total = total / lengths.float() ** self.alpha
        best = total.view(bsz, beam).argmax(1) + torch.arange(bsz, device=total.device) * beam
        return [[self.hypothesis(tokens[r, :int(lengths[r])], nar[r, :int(lengths[r])], float(total[r]))]
                for r in best.tolist()]

    def _teacher_scores(self, tokens, valid, sample, rows):
        """Σ_n log p_AR(y_n | y_<n) of each row's caption, one teacher-forced pass."""
        enc = self.teacher.forward_encoder(sample["net_input"])
        enc = self.teacher.encoder.reorder_encoder_out(enc, rows)
        words = tokens.masked_fill(~valid, self.pad)
        # fairseq's AR input: </s> then the caption (what follows position N-1 cannot
        # influence earlier positions of a causal decoder)
        prev = torch.cat([words.new_full((words.size(0), 1), self.eos), words[:, :-1]], 1)
        logits, _ = self.teacher.decoder(prev, encoder_out=enc)
        lp = F.log_softmax(logits.float(), -1).gather(-1, words.unsqueeze(-1)).squeeze(-1)
        return lp.masked_fill(~valid, 0).sum(1)


def force_length(words: int):
    """The length beam held at one length: ``words`` words."""
    return ["--nar-min-length", str(words), "--nar-max-length", str(words)]


HELP = {"mp": "mask-predict (Eq. 14)", "ef": "easy-first (Eq. 15)", "l2r": "left-to-right (Eq. 17)"}
for _ct in (False, True):
    for _alg in ALGORITHMS:
        register_generator(f"ct-{_alg}" if _ct else _alg, options=MaskPredictOptions, models=("nacf",),
                           forced_length=force_length, algorithm=_alg, coarse_to_fine=_ct,
                           help=f"NACF {'coarse-to-fine ' if _ct else ''}{HELP[_alg]}")(MaskPredictGenerator)
