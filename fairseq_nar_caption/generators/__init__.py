"""Decoding algorithms selectable with the captioning task's ``--generator``.

``sequence`` is fairseq's own ``SequenceGenerator`` (beam search, greedy with
``--beam 1``); it is what the AR baseline decodes with.  The NAR methods register
theirs here with ``@register_generator(name)``; each is a class built as
``cls(task, models, generation_args)`` exposing fairseq's generator interface
``generate(models, sample, **kwargs) -> list (per sample) of list (n-best) of
{"tokens", "score", "positional_scores", "alignment"}`` and reusing one encoder
pass (``model.forward_encoder``) per batch.
"""
from typing import Callable, Dict

GENERATOR_REGISTRY: Dict[str, Callable] = {}


def register_generator(name: str):
    def wrap(cls):
        if name in GENERATOR_REGISTRY or name == "sequence":
            raise ValueError(f"generator {name!r} registered twice")
        GENERATOR_REGISTRY[name] = cls
        return cls

    return wrap


def generator_names():
    return ["sequence"] + sorted(GENERATOR_REGISTRY)


def build_caption_generator(name, task, models, args):
    if name not in GENERATOR_REGISTRY:
        raise ValueError(f"unknown --generator {name!r}; available: {', '.join(generator_names())}")
    return GENERATOR_REGISTRY[name](task, models, args)


from . import mask_predict  # noqa: E402,F401  (NACF: mp, ef, l2r, ct-mp, ct-ef, ct-l2r)
from . import outline_fill  # noqa: E402,F401  (SAIC: outline-fill)
from . import ctc  # noqa: E402,F401  (NARVL: ctc)
from . import diffusion  # noqa: E402,F401  (RDT: diffusion)
