"""Decoding algorithms selectable with every task's ``--generator``.

``sequence`` is fairseq's own ``SequenceGenerator`` (beam search, greedy with ``--beam 1``) under
the package's vocabulary rule (``base.RuledSequenceGenerator``); it is what AR models decode with.
The NAR paradigms register theirs with ``registry.register_generator``: subclasses of
``base.CaptionGenerator`` (one frame: encoder once, banned symbols from one place, hypotheses built
one way), each with its options dataclass, the models it decodes, its help and how a caption
length is forced.  Every module of this folder is imported here, so a new paradigm's generator
module registers itself; ``DecodingConfig`` is then built from the registry.
"""
import importlib
import pkgutil

from ..errors import GeneratorError
from .base import CaptionGenerator, GeneratorContext, RuledSequenceGenerator, banned_symbols
from .options import check_foreign_options, decoding_config, options_of
from .registry import (GENERATORS, check_model_generator, generator_names, model_name, register_generator,
                       spec_of)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

DecodingConfig = decoding_config()


def build_caption_generator(name, models, dictionary, cfg, args=None, context=None):
    """The generator ``name`` for ``models``, with its options read from ``cfg`` (a task
    config that mixes in ``DecodingConfig``)."""
    spec = spec_of(name)
    if name == "sequence":
        raise GeneratorError("--generator sequence is fairseq's beam search: the task builds it")
    check_foreign_options(cfg, spec.options, name)
    check_model_generator(name, models)
    return spec.cls(models, dictionary, options_of(spec.options, cfg), args, context,
                    allow_unk=getattr(cfg, "allow_unk", False), dedup=getattr(cfg, "dedup", False))


__all__ = ["CaptionGenerator", "DecodingConfig", "GENERATORS", "GeneratorContext", "GeneratorError",
           "RuledSequenceGenerator", "banned_symbols", "build_caption_generator", "check_model_generator",
           "generator_names", "model_name", "register_generator", "spec_of"]
