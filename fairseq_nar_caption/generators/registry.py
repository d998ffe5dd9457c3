"""The registry of decoding algorithms (``--generator``): a paradigm registers its generator once.

``register_generator(name, options=…, models=…, help=…, forced_length=…)`` records everything
the rest of the package needs to know about a generator, so that adding a paradigm touches only
its own files:

- ``options``: its options dataclass; every task config mixes in the options of every registered
  generator (``options.decoding_config``), so each flag exists once, and an option of another
  generator is refused by name;
- ``models``: the registered model names (``@register_model``) it decodes; a model of the package
  that is not among them is refused naming the generators that do decode it (the one rule for
  which generator decodes which model);
- ``help``: its phrase in ``--generator``'s help;
- ``forced_length(words)``: the fairseq-generate arguments that force a caption of ``words``
  words (the benchmark's length sweep), or None when the generator's cost does not depend on the
  caption length (a fixed number of positions).

``sequence`` (fairseq's own beam search, for AR models) is registered the same way by
``base.py``.  The generator modules of this folder register themselves when the package
imports them (``generators/__init__.py`` imports every module of the folder).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import GeneratorError


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    cls: type  # a CaptionGenerator subclass (a named variant of it), or RuledSequenceGenerator
    options: Optional[type]  # the options dataclass, or None
    models: Tuple[str, ...]  # registered model names it decodes
    help: str
    forced_length: Optional[Callable[[int], List[str]]] = None


GENERATORS: Dict[str, GeneratorSpec] = {}


def register_generator(name: str, *, models: Sequence[str], help: str, options: Optional[type] = None,
                       forced_length: Optional[Callable[[int], List[str]]] = None, **class_attrs):
    """Register ``cls`` as ``--generator name``; ``class_attrs`` make a named variant of one class
    (e.g. NACF's six algorithms share one generator class)."""
    def wrap(cls):
        if name in GENERATORS:
            raise ValueError(f"generator {name!r} registered twice")
        variant = cls
        if hasattr(cls, "decode"):  # a CaptionGenerator: a variant that knows its name and options
            variant = type(cls.__name__, (cls,), {"name": name, "options_cls": options, **class_attrs})
            variant.__module__ = cls.__module__
        GENERATORS[name] = GeneratorSpec(name, variant, options, tuple(models), help, forced_length)
        return cls

    return wrap


def generator_names() -> List[str]:
    return list(GENERATORS)


def spec_of(name: str) -> GeneratorSpec:
    if name not in GENERATORS:
        raise GeneratorError(f"unknown --generator {name!r}; available: {', '.join(generator_names())}")
    return GENERATORS[name]


def option_classes() -> List[type]:
    """The options dataclasses of the registered generators, each once, in registration order."""
    out: List[type] = []
    for spec in GENERATORS.values():
        if spec.options is not None and spec.options not in out:
            out.append(spec.options)
    return out


def generators_with_options(cls: type) -> List[str]:
    return [s.name for s in GENERATORS.values() if s.options is cls]


def registered_model_names(model) -> List[str]:
    """The names under which the model's class (or a class it derives from) is registered with
    fairseq's ``@register_model``; empty for a model that is not registered (e.g. a test stub)."""
    from fairseq.models import MODEL_REGISTRY

    by_class: Dict[type, List[str]] = {}
    for n, c in MODEL_REGISTRY.items():
        by_class.setdefault(c, []).append(n)
    for klass in type(model).__mro__:
        if klass in by_class:
            return by_class[klass]
    return []


def model_name(model) -> str:
    """``ClassName (--arch registered_name)`` for messages."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    arch = getattr(getattr(model, "cfg", None), "_name", None)
    if arch not in ARCH_MODEL_REGISTRY:
        arch = next(iter(registered_model_names(model)), None)
    return f"{type(model).__name__}" + (f" (--arch {arch})" if arch else "")


def check_model_generator(name: str, models) -> None:
    """Refuse, by name, a model of the package the chosen generator does not decode."""
    spec = spec_of(name)
    for m in models:
        names = set(registered_model_names(m))
        if names and not names & set(spec.models):
            ok = [s.name for s in GENERATORS.values() if names & set(s.models)]
            raise GeneratorError(f"--generator {name} cannot decode {model_name(m)}; it decodes with "
                                 f"--generator {' / '.join(ok) or '(none registered)'}")
