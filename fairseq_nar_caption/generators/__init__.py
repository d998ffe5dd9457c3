"""Decoding algorithms selectable with every task's ``--generator``.

``sequence`` is fairseq's own ``SequenceGenerator`` (beam search, greedy with
``--beam 1``) under the package's vocabulary rule (``base.RuledSequenceGenerator``);
it is what AR models decode with.  The NAR methods register theirs with
``@register_generator(name)``: subclasses of ``base.CaptionGenerator`` (one frame:
encoder once, banned symbols from one place, hypotheses built one way, a capability
check) with their own options dataclass (``options.py``), built by
``build_caption_generator`` from the dictionary and those options, never the task.
"""
from typing import Dict

from .base import CaptionGenerator, GeneratorContext, RuledSequenceGenerator, banned_symbols, model_name
from .options import DecodingConfig, check_foreign_options, options_of
from ..errors import GeneratorError

GENERATOR_REGISTRY: Dict[str, type] = {}


def register_generator(name: str, **class_attrs):
    """Register a ``CaptionGenerator`` subclass as ``--generator name``; ``class_attrs``
    make a named variant of one class (e.g. NACF's six algorithms)."""
    def wrap(cls):
        if name in GENERATOR_REGISTRY or name == "sequence":
            raise ValueError(f"generator {name!r} registered twice")
        if not issubclass(cls, CaptionGenerator):
            raise TypeError(f"{cls.__name__} must subclass CaptionGenerator")
        variant = type(cls.__name__, (cls,), {"name": name, **class_attrs})
        variant.__module__ = cls.__module__
        GENERATOR_REGISTRY[name] = variant
        return cls

    return wrap


def generator_names():
    return ["sequence"] + sorted(GENERATOR_REGISTRY)


def supported_generators(model):
    """The generators a model decodes with (its ``generators`` attribute), or None when
    the model does not say (e.g. a test stub)."""
    return getattr(model, "generators", None)


def check_model_generator(name: str, models) -> None:
    """Refuse, by name, a model the chosen generator cannot decode."""
    for m in models:
        ok = supported_generators(m)
        if ok is not None and name not in ok:
            raise GeneratorError(f"--generator {name} cannot decode {model_name(m)}; it decodes with "
                                 f"--generator {' / '.join(ok)}")


def build_caption_generator(name, models, dictionary, cfg, args=None, context=None):
    """The generator ``name`` for ``models``, with its options read from ``cfg`` (a task
    config that mixes in ``DecodingConfig``)."""
    if name not in GENERATOR_REGISTRY:
        raise GeneratorError(f"unknown --generator {name!r}; available: {', '.join(generator_names())}")
    cls = GENERATOR_REGISTRY[name]
    check_foreign_options(cfg, cls.options_cls, name)
    check_model_generator(name, models)
    return cls(models, dictionary, options_of(cls.options_cls, cfg), args, context,
               allow_unk=getattr(cfg, "allow_unk", False), dedup=getattr(cfg, "dedup", False))


from . import mask_predict  # noqa: E402,F401  (NACF: mp, ef, l2r, ct-mp, ct-ef, ct-l2r)
from . import outline_fill  # noqa: E402,F401  (SAIC: outline-fill)
from . import ctc  # noqa: E402,F401  (NARVL: ctc)
from . import diffusion  # noqa: E402,F401  (RDT: diffusion)

__all__ = ["CaptionGenerator", "DecodingConfig", "GeneratorContext", "GeneratorError", "RuledSequenceGenerator",
           "banned_symbols", "build_caption_generator", "check_model_generator", "generator_names",
           "register_generator"]
