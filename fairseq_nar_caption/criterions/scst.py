"""Self-critical sequence training for every model with a sampler: ``--criterion scst``.

The loss is ``self_critical``'s: −(1/K) Σ_k (r(w^k) − b_k)·log p_θ(w^k) with K sampled captions per
image, CIDEr-D rewards and the greedy or mean-of-samples baseline.  What differs between paradigms
is how a caption is sampled and what log p_θ(w) is; the estimator is chosen by the model:

- **AR** (``ar_caption``, also SAIC's AR teacher; ``narvl_ar`` on ``--vl-task caption``): K captions per image from fairseq's
  sampling (``SequenceGenerator`` with ``search.Sampling``, the task's generation options:
  ``--eval-cider-args`` caps the samples as the validation decode), the vocabulary rule of every
  generator (``banned_symbols``); log p_θ(w) = Σ_t log p(w_t | w_<t, I) from a teacher-forced pass
  over the samples (with gradients), under the same rule (banned symbols and <pad> at −∞, </s> at
  the first step, renormalised) so that it is the probability of the distribution sampled from.
  The greedy baseline decodes with beam 1.  (Rennie et al. 2017.)
- **CTC** (``narvl``, ``narvl_features``): one query-decoder pass gives independent distributions
  over the N positions; an alignment a ~ Π_n p(a_n) is sampled per position, collapsed (merge
  repeats, drop <blank>: NARVL Eq. 1's B) and the collapsed caption rewarded;
  log p_θ = Σ_n log p(a_n), the probability of the alignment: the alignment is the action
  (REINFORCE, Williams 1992, with the policy Π_n p(a_n | I); the collapsed caption's own probability
  sums over alignments and is what the Query-CTC loss trains).  NARVL reports no CIDEr optimisation
  (its Table 5: all models without it); the per-position sampling follows the NAR captioners that do
  (Guo et al., IJCAI 2020, below).
  Greedy: the argmax alignment, collapsed.
- **masked LM** (``nacf``): a length L ~ p(L | I) from the length predictor (lengths ≥ 1), one pass
  of the decoder over L <mask> tokens, one word per position from its distribution (the words are
  conditionally independent given L, as in counterfactual-critical NAR captioning, Guo et al.,
  IJCAI 2020, which samples all words of a NAR captioner in parallel);
  log p_θ = log p(L) + Σ_i log p(w_i | L, I).  Greedy: the most probable length, argmax words (MP, T = 1).
- **outline + fill** (``saic``, SAIC's semi-autoregressive decoder): SAIC's own factorisation
  p(Y | I) = p_out(z | I) · Π_slots p_fill(y_p | z, I) (the two terms Eq. 10 ranks by): an outline
  z = z_0..z_{m-1}, </s> from the Outliner by fairseq's sampling over the group heads (the
  ``outline-fill`` generator with ``--sampling``, capped as its validation decode), then one word
  per Filler slot from the Filler's distribution (the slots are conditionally independent given the
  outline, as the Filler decodes them in one pass; </s> allowed: it ends the caption inside the last
  group); the caption is the filled sequence up to its first </s>.  log p_θ = Σ_i log p_out(z_i |
  z_<i, I) (teacher-forced over the heads, under the generator's rule: banned symbols and <pad> at
  −∞, no </s> first) + Σ over every slot of log p_fill (also those after the first </s>, as Eq. 10
  sums them: the filled sequence is the action, the caption a function of it).  SAIC reports no
  CIDEr optimisation of its own decoder (its AR teacher is SCST-tuned, §3.2); the per-slot sampling
  is the masked-LM estimator's (Guo et al., IJCAI 2020) applied to the Filler.
  Greedy: ``outline-fill`` with M_out = M_fill = 1.
- **DAG** (``dag_caption``): DA-Transformer's generative process itself (Huang et al., ICML 2022:
  P(Y, A | X) = P(A | X)·P(Y | A, X)): a path A from the first vertex to the last, one transition at
  a time from the transition distribution, then one token at every visited vertex but the last
  (which emits </s>); log p_θ = Σ log E[a_i, a_i+1] + Σ log P(y_i | v_a_i).  Greedy: the most
  probable transition from each vertex, the most probable token at each (``--dag-decode greedy``).

Samples, their log-probabilities and the greedy caption all come from the model without dropout
(``eval`` mode for the criterion's passes, restored after): the gradient is that of the one
distribution the captions were drawn from.  The random draws come from torch's generator, which
fairseq seeds per update (``--seed``): the same seed gives the same samples.

Validation is the task's decode score (``--eval-cider``, required): the criterion adds nothing to a
validation pass.  RDT has its own guided variant (``rdt_scst``) on the same reward and baseline.
"""
import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.data.data_utils import collate_tokens
from torch import Tensor

from ..errors import OptionError
from ..generators.base import banned_symbols
from ..generators.ctc import collapse
from ..generators.outline_fill import OutlineFillGenerator, OutlineFillOptions
from ..generators.registry import registered_model_names, spec_of
from ..models.saic import filler_layout, filler_slots
from .self_critical import SelfCriticalConfig, SelfCriticalCriterion


@contextlib.contextmanager
def without_dropout(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _ruled(lprobs: Tensor, never: Sequence[int]) -> Tensor:
    """Log-probabilities with the symbols ``never`` at −∞, renormalised over the rest."""
    lprobs = lprobs.float().clone()
    if len(never):
        lprobs[..., torch.as_tensor(list(never), device=lprobs.device)] = float("-inf")
    return F.log_softmax(lprobs, dim=-1)


class Estimator:
    """One paradigm's sampler: ``draw`` → (K·B token sequences, sample-major: row k·B + b is
    sample k of image b; their log-probabilities K x B with gradients); ``greedy`` → B sequences."""

    def __init__(self, task):
        self.task = task
        d = task.target_dictionary
        self.pad, self.eos = d.pad(), d.eos()
        self.banned = banned_symbols(d, getattr(task.cfg, "allow_unk", False))

    def teacher_forced(self, rows: List[Tensor], decoder) -> Tuple[Tensor, Tensor]:
        """Sequences ending in </s> → (their padded batch, Σ_t log p(w_t | w_<t) of each): ``decoder``
        maps the shifted input (</s> first) to logits; banned symbols and <pad> at −∞ and no </s> at the
        first step (fairseq's min_len 1), renormalised: the rule fairseq's sampling drew them under."""
        target = collate_tokens(rows, self.pad)  # w_1..w_n, </s>, pad after
        prev = collate_tokens(rows, self.pad, self.eos, move_eos_to_beginning=True)  # </s>, w_1..w_n, pad after
        logits = decoder(prev).float().clone()
        logits[:, 0, self.eos] = float("-inf")
        lprobs = _ruled(logits, sorted(set(self.banned) - {self.eos} | {self.pad}))
        tok = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return target, tok.masked_fill(target.eq(self.pad), 0.0).sum(1)

    def draw(self, model, sample, k: int) -> Tuple[List[Tensor], Tensor]:
        raise NotImplementedError

    def greedy(self, model, sample) -> List[Tensor]:
        raise NotImplementedError


class ARSampling(Estimator):

    def __init__(self, task):
        super().__init__(task)
        self._generators = {}

    def _generator(self, model, **options):
        key = (id(model), tuple(sorted(options.items())))
        if key not in self._generators:
            self._generators[key] = self.task.build_generator([model], self.task.eval_generation_args(**options))
        return self._generators[key]

    def _hypotheses(self, model, sample, **options) -> List[List[Tensor]]:
        gen = self._generator(model, **options)
        with torch.no_grad():
            return [[h["tokens"] for h in hyps] for hyps in gen.generate([model], sample)]

    def draw(self, model, sample, k):
        hyps = self._hypotheses(model, sample, sampling=True, sampling_topk=-1, sampling_topp=-1.0,
                                beam=k, nbest=k, temperature=1.0)
        bsz = len(hyps)
        rows = [hyps[b][j] for j in range(k) for b in range(bsz)]  # sample-major
        return rows, self.log_prob(model, sample, rows, k).view(k, bsz)

    def log_prob(self, model, sample, rows: List[Tensor], k: int) -> Tensor:
        """Σ_t log p(w_t | w_<t, I) of each sequence (ending in </s>), teacher-forced, under the
        sampling rule (module docstring)."""
        device = sample["net_input"][next(iter(sample["net_input"]))].device
        encoder_out = model.encoder.forward_torchscript(sample["net_input"])
        order = torch.arange(len(rows) // k, device=device).repeat(k)
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, order)
        rows = [r.to(device) for r in rows]
        return self.teacher_forced(rows, lambda prev: model.decoder(prev, encoder_out=encoder_out)[0])[1]

    def greedy(self, model, sample):
        return [h[0] for h in self._hypotheses(model, sample, beam=1, nbest=1, sampling=False)]


class CTCSampling(Estimator):

    def __init__(self, task):
        super().__init__(task)
        d = task.target_dictionary
        self.blank = d.index("<blank>")
        self.never = sorted((set(self.banned) | {self.eos}) - {self.blank})

    def _pass(self, model, sample):
        encoder_out = model.forward_encoder(sample["net_input"])
        lprobs, pad_mask = model.forward_decoder(encoder_out)  # B x N x V
        return _ruled(lprobs, self.never), pad_mask

    def _collapsed(self, alignments: Tensor, pad_mask: Optional[Tensor]) -> List[Tensor]:
        if pad_mask is not None:
            alignments = alignments.masked_fill(pad_mask, self.blank)
        return [torch.tensor(r, dtype=torch.long) for r in collapse(alignments.cpu(), self.blank)]

    def draw(self, model, sample, k):
        lprobs, pad_mask = self._pass(model, sample)
        a = torch.distributions.Categorical(logits=lprobs).sample((k,))  # K x B x N
        logp = lprobs.unsqueeze(0).expand(k, *lprobs.shape).gather(-1, a.unsqueeze(-1)).squeeze(-1)
        if pad_mask is not None:
            logp = logp.masked_fill(pad_mask.unsqueeze(0), 0.0)
            pad_rows = pad_mask.repeat(k, 1)
        else:
            pad_rows = None
        return self._collapsed(a.reshape(-1, a.size(-1)), pad_rows), logp.sum(-1)

    def greedy(self, model, sample):
        lprobs, pad_mask = self._pass(model, sample)
        return self._collapsed(lprobs.argmax(-1), pad_mask)


class MaskedLMSampling(Estimator):

    def __init__(self, task):
        super().__init__(task)
        d = task.target_dictionary
        self.mask = d.index("<mask>")
        self.never = sorted(set(self.banned) | {self.eos})  # inside a caption of fixed length: words only

    def _lengths(self, model, encoder_out) -> Tensor:
        length = model.forward_length(encoder_out).float()  # B x N_max, log-probabilities
        none = torch.zeros_like(length, dtype=torch.bool)
        none[:, 0] = True  # a caption has at least one word
        return F.log_softmax(length.masked_fill(none, float("-inf")), -1)

    def _words(self, model, encoder_out, lengths: Tensor, rows: Tensor):
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, rows)
        width = int(lengths.max())
        valid = torch.arange(width, device=lengths.device)[None] < lengths[:, None]
        tokens = torch.full(valid.shape, self.mask, dtype=torch.long, device=lengths.device).masked_fill(~valid, self.pad)
        return _ruled(model.forward_decoder_nar(tokens, encoder_out), self.never), valid

    def draw(self, model, sample, k):
        encoder_out = model.forward_encoder(sample["net_input"])
        length_lp = self._lengths(model, encoder_out)
        bsz = length_lp.size(0)
        lengths = torch.distributions.Categorical(logits=length_lp).sample((k,))  # K x B
        rows = torch.arange(bsz, device=lengths.device).repeat(k)
        lprobs, valid = self._words(model, encoder_out, lengths.reshape(-1), rows)
        words = torch.distributions.Categorical(logits=lprobs).sample()  # K·B x W
        logp = lprobs.gather(-1, words.unsqueeze(-1)).squeeze(-1).masked_fill(~valid, 0.0).sum(1).view(k, bsz)
        logp = logp + length_lp.gather(1, lengths.t()).t()
        return [w[v].cpu() for w, v in zip(words, valid)], logp

    def greedy(self, model, sample):
        encoder_out = model.forward_encoder(sample["net_input"])
        lengths = self._lengths(model, encoder_out).argmax(-1)
        lprobs, valid = self._words(model, encoder_out, lengths, torch.arange(lengths.numel(), device=lengths.device))
        return [w[v].cpu() for w, v in zip(lprobs.argmax(-1), valid)]


class OutlineFillSampling(Estimator):

    def __init__(self, task):
        super().__init__(task)
        self.mask = task.target_dictionary.index("<mask>")
        self._generators = {}

    def _generator(self, model, beam: int, sampling: bool) -> OutlineFillGenerator:
        key = (id(model), beam, sampling)
        if key not in self._generators:
            args = self.task.eval_generation_args(sampling=sampling, sampling_topk=-1, sampling_topp=-1.0,
                                                  temperature=1.0)
            self._generators[key] = OutlineFillGenerator(
                [model], self.task.target_dictionary, OutlineFillOptions(outline_beam=beam, fill_beam=beam), args)
        return self._generators[key]

    def sample(self, model, sample, k: int) -> Tuple[Tensor, Tensor, Tensor]:
        """K draws per image (sample-major rows) → (outlines K·B x H: z_0..z_{m-1}, </s>, pad after;
        filled sequences K·B x ((H − 1)·k + 1): the outline at every k-th position, the sampled words
        at the Filler's slots, pad after; log p_θ K·B: the outline's and every slot's)."""
        encoder_out = model.forward_encoder(sample["net_input"])
        with torch.no_grad():
            outlines = self._generator(model, k, True).outline(sample, encoder_out)
        bsz = len(outlines)
        heads = [outlines[b][j]["tokens"] for j in range(k) for b in range(bsz)]
        enc = model.encoder.reorder_encoder_out(encoder_out, torch.arange(bsz, device=heads[0].device).repeat(k))
        target, logp = self.teacher_forced(heads, lambda prev: model.forward_outliner(prev, enc))
        tokens = filler_layout(target, model.group_size, self.mask, self.pad)
        slots = filler_slots(tokens, model.group_size, self.pad)
        if slots.any():
            fill_lp = _ruled(model.forward_filler(tokens, enc), self.banned)  # </s> allowed
            words = torch.distributions.Categorical(logits=fill_lp).sample()
            tokens = torch.where(slots, words, tokens)
            logp = logp + fill_lp.gather(-1, words.unsqueeze(-1)).squeeze(-1).masked_fill(~slots, 0.0).sum(1)
        return target, tokens, logp

    def caption(self, filled: Tensor) -> Tensor:
        """A filled sequence's caption: its words up to the first </s>."""
        return filled[: int(filled.eq(self.eos).nonzero()[0])].cpu()

    def draw(self, model, sample, k):
        _, filled, logp = self.sample(model, sample, k)
        return [self.caption(f) for f in filled], logp.view(k, -1)

    def greedy(self, model, sample):
        return [h[0]["tokens"] for h in self._generator(model, 1, False).generate([model], sample)]


class DAGSampling(Estimator):

    def __init__(self, task):
        super().__init__(task)
        self.never = sorted(set(self.banned) | {self.eos})  # what a vertex before the last never emits

    def _pass(self, model, sample):
        token_lp, link_lp = model.forward_graph(model.forward_encoder(sample["net_input"]))
        return _ruled(token_lp[:, :-1], self.never), link_lp.float()  # the last vertex: </s>, probability 1

    def _walk(self, link_lp: Tensor, choose) -> Tuple[Tensor, Tensor]:
        """Paths from the first vertex to the last (``choose``: transition log-probs R x L → next
        vertices R) → (visited mask R x L, Σ of the taken transitions' log-probabilities R)."""
        rows, n = link_lp.size(0), link_lp.size(1)
        v = torch.zeros(rows, dtype=torch.long, device=link_lp.device)
        visited = torch.zeros(rows, n, dtype=torch.bool, device=link_lp.device)
        visited[:, 0] = True
        logp = link_lp.new_zeros(rows)
        for _ in range(n - 1):  # every transition moves forward: at most L − 1 of them
            done = v.eq(n - 1)
            step = link_lp[torch.arange(rows, device=v.device), v.clamp(max=n - 2)]  # R x L
            nxt = torch.where(done, v, choose(step))
            logp = logp + torch.where(done, logp.new_zeros(()), step.gather(1, nxt.unsqueeze(1)).squeeze(1))
            visited[torch.arange(rows, device=v.device), nxt] = True
            v = nxt
        return visited, logp

    def _captions(self, words: Tensor, visited: Tensor) -> List[Tensor]:
        return [w[m[:-1]].cpu() for w, m in zip(words, visited)]  # the visited vertices' tokens, the last's </s> out

    def sample(self, token_lp: Tensor, link_lp: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
        """K draws per graph (sample-major rows) → (tokens K·B x (L − 1), visited vertices K·B x L,
        log p_θ K·B: the path's transitions and the visited vertices' tokens)."""
        rows = torch.arange(token_lp.size(0), device=token_lp.device).repeat(k)
        visited, path_lp = self._walk(link_lp[rows], lambda lp: torch.distributions.Categorical(logits=lp).sample())
        tok = token_lp[rows]
        words = torch.distributions.Categorical(logits=tok).sample()
        word_lp = tok.gather(-1, words.unsqueeze(-1)).squeeze(-1).masked_fill(~visited[:, :-1], 0.0).sum(1)
        return words, visited, path_lp + word_lp

    def draw(self, model, sample, k):
        token_lp, link_lp = self._pass(model, sample)
        words, visited, logp = self.sample(token_lp, link_lp, k)
        return self._captions(words, visited), logp.view(k, token_lp.size(0))

    def greedy(self, model, sample):
        token_lp, link_lp = self._pass(model, sample)
        visited, _ = self._walk(link_lp, lambda lp: lp.argmax(-1))
        return self._captions(token_lp.argmax(-1), visited)


def _estimators():
    """registered model name → its estimator class (the models the generators of each kind decode)."""
    table = {name: ARSampling for name in spec_of("sequence").models}
    table.update({name: CTCSampling for name in spec_of("ctc").models})
    table.update({name: MaskedLMSampling for name in spec_of("mp").models})
    table.update({name: OutlineFillSampling for name in spec_of("outline-fill").models})
    table.update({name: DAGSampling for name in spec_of("dag").models})
    return table


@register_criterion("scst", dataclass=SelfCriticalConfig)
class SCSTCriterion(SelfCriticalCriterion):
    def __init__(self, task, num_samples, scst_baseline, reward_split):
        super().__init__(task, "scst", num_samples, scst_baseline, reward_split)
        self._estimator: Optional[Tuple[int, Estimator]] = None

    def estimator(self, model) -> Estimator:
        if self._estimator is None or self._estimator[0] != id(model):
            table = _estimators()
            names = registered_model_names(model)
            cls = next((table[n] for n in names if n in table), None)
            if cls is None:
                raise OptionError(f"--criterion scst has no sampler for {type(model).__name__} "
                                  f"({', '.join(names) or 'not a registered model'}); it trains "
                                  f"{', '.join(sorted(table))} (RDT: --criterion rdt_scst)")
            self._estimator = (id(model), cls(self.task))
        return self._estimator[1]

    def forward(self, model, sample, reduce=True):
        estimator = self.estimator(model)
        if not model.training:
            return self.validation_output(len(sample["item_ids"]))
        with without_dropout(model):
            rows, logp = estimator.draw(model, sample, self.k)
            return self.self_critical_loss(rows, logp, sample["item_ids"], lambda: estimator.greedy(model, sample))
