"""The forward set-up both RDT criteria share (stage 1 ``rdt_loss``, stage 2 ``rdt_scst``): the
model check, the caption's analog bits x0, t' ~ U(0, max_time) and ε, x_t by Eq. 1, the encoder
pass and the cascade condition (a first model's caption bits, ``--cascaded``).  The random draws
come in this order: t' (B), ε (the shape of x0), then whatever the encoder draws (dropout)."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..errors import OptionError
from ..models.rdt import forward_noise


def check_rdt_model(model, criterion: str) -> None:
    if not hasattr(model, "denoise"):
        raise OptionError(f"--criterion {criterion} trains RDT (--arch rdt*), got {type(model).__name__}")


def caption_bits(model, tokens: Tensor, item_ids=None, what: str = "caption") -> Tuple[Tensor, Tensor]:
    """Captions (words, </s>, pad) → (the L fixed-length slots, their analog bits x0)."""
    fixed = model.fixed_length(tokens, item_ids, what)
    return fixed, model.to_bits(fixed)


def draw_time_and_noise(x0: Tensor, max_time: float, training: bool) -> Tuple[Tensor, Tensor]:
    """t' ~ U(0, max_time) per caption and ε ~ N(0, I) of x0's shape; from a fixed seed (0) when
    not training, so that validation losses are comparable."""
    bsz = x0.size(0)
    if training:
        return torch.rand(bsz, device=x0.device) * max_time, torch.randn_like(x0)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(bsz, generator=g) * max_time
    return t.to(x0.device), torch.randn(x0.shape, generator=g).to(x0)


def noised_inputs(model, sample, x0: Tensor, max_time: float):
    """The denoiser's inputs: → (t', x_t, γ(t'), encoder_out, cascade bits or None)."""
    t, noise = draw_time_and_noise(x0, max_time, model.training)
    x_t, gamma = forward_noise(x0, t, model.noise_schedule, noise)  # Eq. 1
    if model.cfg.cascaded and "cascade_tokens" not in sample:
        raise OptionError("a --cascaded model trains on a first model's captions: set the task's "
                          "--cascade-manifests (one caption per item of every split it reads)")
    encoder_out = model.forward_encoder(sample["net_input"])
    cascade: Optional[Tensor] = None
    if model.cfg.cascaded:
        cascade = caption_bits(model, sample["cascade_tokens"], sample.get("item_ids"), "first-stage caption")[1]
    return t, x_t, gamma, encoder_out, cascade
