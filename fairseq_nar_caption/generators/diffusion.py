"""RDT decoding: the reverse process of Eq. 3-7 / Algorithm 1.  ``--generator diffusion``
with ``--diffusion-steps`` T, ``--time-difference`` Δ,
``--diffusion-noise`` and ``--diffusion-seed``; ``--diffusion-max-time`` (t' of a step is at
most this, default 0.999 = the training range; 1 = the reference), ``--diffusion-sampler``
(``ddpm`` = Eq. 5-7, default; ``ddim``) and ``--diffusion-words`` (``nearest-code``, default;
``argmax``) are the issue-#12 diagnostics (examples/rdt/README.md, "Quality diagnosis").

Per batch:

1. the encoder (Ranking Visual Encoder) and the retrieved-sentence embedding run once
   (``model.forward_encoder``);
2. x_T ~ N(0, I) over the L word slots, drawn per item from ``seed + sample id`` so an
   item's caption does not depend on its batch (batch-1 = batched);
   (``--diffusion-start-time`` τ < 1: x_τ = the retrieved sentence's bits noised to t' = τ by
   Eq. 1 with that draw as ε, and the times below are scaled by τ: the model edits its
   condition, as SDEdit edits an image);
3. for t = T … 1: t' = min(t/T, max-time), s' = min(max(t − 1 − Δ, 0)/T, max-time);
   x̂0 = f(x_t, γ(t'), G) with the previous x̂0 as self-condition (zeros at the first
   step), clamped to ±scale (a no-op for the softmax × code book prediction);
   α_s, α_t = sqrt(σ(−γ(s'))), sqrt(σ(−γ(t'))) (Eq. 3); μ_s = sqrt(σ(γ(s'))),
   c = −expm1(γ(s') − γ(t')) (Eq. 4); u = α_s·(x_t(1 − c)/α_t + c·x̂0) (Eq. 5);
   x_{t−1} = u, plus μ_s·sqrt(c)·ε (Eq. 6-7) only with ``--diffusion-noise``;
4. the words are the nearest valid word codes of x_0 (``bits_to_ids``, never a non-word
   symbol), cut at the first </s> (which is kept; one is appended if none; with
   ``--diffusion-eos-fallback`` a row without </s> gets it in the slot where the last pass's
   p(</s>) is highest);
   positional scores are the last pass's log-probabilities of the chosen words.

Cascade (``--path first.pt:second.pt``): the first model decodes with
``--cascade-steps``/``--cascade-time-difference``, the second (``--cascaded``) model then
decodes with T, Δ conditioned on the first model's caption bits (SCD-Net's cascaded
inference).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import GeneratorError
from ..models.modules.bits import bits_to_ids
from ..models.rdt import alpha_sigma, forward_noise
from .base import CaptionGenerator
from .registry import register_generator


def reverse_step(model, x_t: Tensor, t: float, s: float, x0_hat: Tensor, noise: Optional[Tensor] = None) -> Tensor:
    """One step of Eq. 3-7 from time t' = t to s' = s given the prediction x̂0."""
    g_t = model.gamma(torch.full((), t, dtype=torch.float32, device=x_t.device))
    g_s = model.gamma(torch.full((), s, dtype=torch.float32, device=x_t.device))
    alpha_t, _ = alpha_sigma(g_t)  # Eq. 3
    alpha_s, mu_s = alpha_sigma(g_s)  # Eq. 3-4
    c = -torch.expm1(g_s - g_t)  # Eq. 4
    u = alpha_s * (x_t * (1 - c) / alpha_t + c * x0_hat)  # Eq. 5
    if noise is None:
        return u
    return u + (mu_s ** 2 * c).sqrt() * noise  # Eq. 6-7


def ddim_step(model, x_t: Tensor, t: float, s: float, x0_hat: Tensor) -> Tensor:
    """One deterministic DDIM step (Song et al., η = 0) from t' = t to s' = s: the noise implied by
    x_t, ε̂ = (x_t − α_t·x̂0)/σ_t (Eq. 1 solved for ε), is kept at s's level:
    x_s = α_s·x̂0 + σ_s·ε̂, so every step's input has the noise level its γ(s') says (Eq. 5's
    posterior mean instead shrinks x_t's noise to ~0 at the first step: x_s ≈ α_s·x̂0)."""
    alpha_t, sigma_t = alpha_sigma(model.gamma(torch.full((), t, dtype=torch.float32, device=x_t.device)))
    alpha_s, sigma_s = alpha_sigma(model.gamma(torch.full((), s, dtype=torch.float32, device=x_t.device)))
    eps_hat = (x_t - alpha_t * x0_hat) / sigma_t
    return alpha_s * x0_hat + sigma_s * eps_hat


def item_normal(ids, shape, seed: int, device) -> Tensor:
    """One N(0, I) draw of ``shape`` per item (``ids``: a tensor or a list of ints), from its own
    generator (seed + id), drawn on the host (the same draw on every device) and moved to ``device``."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + int(i)))
           for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
    return torch.stack(out).to(device)



@dataclass
class DiffusionOptions(FairseqDataclass):
    """RDT (generators/diffusion.py): diffusion."""
    diffusion_steps: int = field(default=50, metadata={"help": "T: reverse steps (Algorithm 1)"})
    time_difference: float = field(default=0.0, metadata={"help": "Δ >= 0: s = t − 1 − Δ (Eq. 3-7)"})
    diffusion_noise: bool = field(
        default=False, metadata={"help": "add the μ(s', t')·ε term of Eq. 7 (default: deterministic, as the reference)"})
    diffusion_seed: int = field(default=1, metadata={"help": "x_T (and ε) of item i drawn from seed + sample id"})
    cascade_steps: int = field(default=0, metadata={"help": "T of the first model when decoding a cascade "
                                                            "(--path first.pt:second.pt); 0 = --diffusion-steps"})
    cascade_time_difference: float = field(default=0.0, metadata={"help": "Δ of the first model of a cascade"})
    diffusion_max_time: float = field(
        default=0.999, metadata={"help": "t' of a reverse step is at most this: 0.999 = the training range "
                                         "t' ~ U(0, 0.999) (γ(1) = 33.9 is a time the model never saw); "
                                         "1 = the reference's first step at t' = 1"})
    diffusion_sampler: str = field(
        default="ddpm", metadata={"help": "ddpm = Eq. 5-7, the posterior mean (+ noise with --diffusion-noise; "
                                          "the paper / reference); ddim = deterministic DDIM, x_s = α_s·x̂0 + "
                                          "σ_s·ε̂, which keeps x_T's noise at every step's level"})
    diffusion_eos_fallback: bool = field(
        default=False, metadata={"help": "a caption whose L slots hold no </s> is cut where the last pass gives </s> "
                                         "its highest probability (default: all L slots are kept, as the reference)"})
    diffusion_start_time: float = field(
        default=1.0, metadata={"help": "τ in (0, 1]: 1 = from noise x_T (the paper); τ < 1 = edit the retrieved "
                                       "sentence: start from its bits noised to t' = τ (Eq. 1) and run the T steps "
                                       "over [0, τ] (SDEdit, Meng et al. 2022)"})
    diffusion_words: str = field(
        default="nearest-code", metadata={"help": "how the final x_0 becomes words: nearest-code = the valid word "
                                                  "nearest to the bits (the paper's thresholding); argmax = the "
                                                  "last pass's most probable word per slot"})

    def validate(self):
        if self.diffusion_steps < 1 or self.cascade_steps < 0 or self.time_difference < 0 \
                or self.cascade_time_difference < 0:
            raise GeneratorError(f"need T >= 1 and Δ >= 0, got --diffusion-steps {self.diffusion_steps} "
                                 f"--time-difference {self.time_difference} --cascade-steps {self.cascade_steps} "
                                 f"--cascade-time-difference {self.cascade_time_difference}")
        if not 0 < self.diffusion_start_time <= 1:
            raise GeneratorError(f"--diffusion-start-time must be in (0, 1], got {self.diffusion_start_time}")
        if not 0 < self.diffusion_max_time <= 1:
            raise GeneratorError(f"--diffusion-max-time must be in (0, 1], got {self.diffusion_max_time}")
        if self.diffusion_sampler not in ("ddpm", "ddim"):
            raise GeneratorError(f"--diffusion-sampler must be ddpm or ddim, got {self.diffusion_sampler!r}")
        if self.diffusion_sampler == "ddim" and self.diffusion_noise:
            raise GeneratorError("--diffusion-noise adds Eq. 7's noise to the ddpm sampler; ddim is deterministic")
        if self.diffusion_words not in ("nearest-code", "argmax"):
            raise GeneratorError(f"--diffusion-words must be nearest-code or argmax, got {self.diffusion_words!r}")


class DiffusionGenerator(CaptionGenerator):
    max_models = 2  # a cascade: first.pt:second.pt

    def __init__(self, models, dictionary, options: DiffusionOptions, args=None, context=None, **frame):
        super().__init__(models, dictionary, options, args, context, **frame)  # allow_unk, dedup
        if len(models) == 2 and not models[1].cfg.cascaded:
            raise GeneratorError("a cascade (--path first.pt:second.pt) needs a second model trained with --cascaded")
        if models[0].cfg.cascaded:
            raise GeneratorError("the first (or only) model is a cascaded second-stage model: give its first stage "
                                 "first (--path first.pt:second.pt)")
        self.steps, self.delta = options.diffusion_steps, options.time_difference
        self.first_steps = options.cascade_steps or options.diffusion_steps
        self.first_delta = options.cascade_time_difference
        self.sample_noise, self.seed = options.diffusion_noise, options.diffusion_seed
        self.max_time, self.words_from = options.diffusion_max_time, options.diffusion_words
        self.sampler, self.eos_fallback = options.diffusion_sampler, options.diffusion_eos_fallback
        self.start_time = options.diffusion_start_time
        if self.start_time < 1 and any(getattr(m.cfg, "no_retrieval", False) for m in models):
            raise GeneratorError("--diffusion-start-time < 1 edits the retrieved sentence: the model was trained "
                                 "with --no-retrieval")
        # the vocabulary rule as a word mask: logits and the nearest-word decision never reach a banned symbol
        self.word_mask = torch.ones(len(dictionary), dtype=torch.bool)
        self.word_mask[self.banned] = False

    def sample(self, model, encoder_out, ids: Tensor, steps: int, delta: float,
               cascade_bits: Optional[Tensor] = None):
        """Algorithm 1 for one model: returns (final x_0, last logits)."""
        bsz = ids.numel()
        shape = (model.seq_len, model.n_bits)
        device = encoder_out["encoder_out"][0].device
        id_list = ids.tolist()  # read once
        x = item_normal(id_list, shape, self.seed, device)  # x_T
        tau = self.start_time
        if tau < 1:  # x_τ: the retrieved sentence's bits noised to t' = τ (Eq. 1), x_T's draw as ε
            start = model.to_bits(model.fill_slots(encoder_out["retrieved_tokens"][0]))
            x = forward_noise(start, torch.full((bsz,), tau, device=device), model.noise_schedule, x)[0]
        x0_hat, logits = None, None
        scale = model.bit_scale
        # drawn and moved to the device before the loop: no step waits on a host-to-device copy
        word_mask = self.word_mask.to(device)
        noises = {k: item_normal([i * 1009 + k for i in id_list], shape, self.seed + 1, device) for k in range(steps, 0, -1)
                  if k - 1 - delta > 0} if self.sample_noise else {}
        for k in range(steps, 0, -1):
            t, s = tau * k / steps, tau * max(k - 1 - delta, 0) / steps  # t' and s' (Algorithm 1, line 3)
            t, s = min(t, self.max_time), min(s, self.max_time)  # within the training range of t'
            gamma = model.gamma(torch.full((bsz,), t, device=device))
            logits, x0_hat = model.denoise(x, gamma, encoder_out, x0_hat, cascade_bits,
                                           word_mask=word_mask)
            x0_hat = x0_hat.clamp(-scale, scale)
            noise = noises.get(k) if s > 0 else None
            if self.sampler == "ddim":
                x = ddim_step(model, x, t, s, x0_hat)
            else:
                x = reverse_step(model, x, t, s, x0_hat, noise)
        return x, logits

    def words(self, model, x0: Tensor, logits: Tensor) -> Tensor:
        """B x L word ids of the final x_0: its nearest valid code, or the last pass's argmax."""
        if self.words_from == "argmax":
            return logits.argmax(-1)  # the banned symbols are at −∞ (word_mask)
        return bits_to_ids(x0, model.book, self.word_mask.to(x0.device))

    def to_hypotheses(self, model, x0: Tensor, logits: Tensor) -> List[List[Dict[str, Tensor]]]:
        words = self.words(model, x0, logits)
        all_lprobs = F.log_softmax(logits.float(), dim=-1)
        if self.eos_fallback:  # no </s> in a row: put it in the slot (after the first) where p(</s>) is highest
            none = ~words.eq(self.eos).any(1)
            if none.any():
                best = all_lprobs[:, 1:, self.eos].argmax(1) + 1
                words = words.clone()
                words[none, best[none]] = self.eos
        lprobs = all_lprobs.gather(-1, words.unsqueeze(-1)).squeeze(-1)
        out = []
        for row, lp in zip(words, lprobs):
            ends = row.eq(self.eos).nonzero()
            n = int(ends[0]) if len(ends) else len(row)  # words before the first </s> (all L without one)
            eos_score = float(lp[n]) if len(ends) else 0.0
            out.append([self.hypothesis(row[:n], lp[:n], float(torch.cat([lp[:n], lp.new_tensor([eos_score])]).mean()),
                                        eos_score=eos_score)])
        return out

    def decode(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        ids = sample["id"]
        first = self.models[0]
        steps = self.first_steps if len(self.models) == 2 else self.steps
        delta = self.first_delta if len(self.models) == 2 else self.delta
        x0, logits = self.sample(first, encoder_out, ids, steps, delta)
        if len(self.models) == 1:
            return self.to_hypotheses(first, x0, logits)
        second = self.models[1]
        # the first model's caption, cut at its first </s> and refilled with </s>, as bits
        words = self.words(first, x0, logits)
        words = words.masked_fill(first.sentence_mask(words).logical_not(), first.eos)
        cascade_bits = second.to_bits(second.fixed_length(words[:, : second.seq_len]))
        encoder_out = second.forward_encoder(sample["net_input"])
        x0, logits = self.sample(second, encoder_out, ids, self.steps, self.delta, cascade_bits)
        return self.to_hypotheses(second, x0, logits)


register_generator("diffusion", options=DiffusionOptions, models=("rdt",),
                   help="RDT: T reverse steps of bit diffusion")(DiffusionGenerator)
