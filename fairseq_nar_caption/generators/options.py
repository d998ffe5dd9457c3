"""Decoding options: what every generator shares, and the config every task mixes in.

Each generator declares its own options as one dataclass in its own module and registers it
(``registry.register_generator(options=…)``); ``decoding_config`` builds ``DecodingConfig`` from
``GeneratorChoice`` (``--generator``, ``--allow-unk``, ``--dedup``) and every registered options
class, and the ``captioning`` and ``vision_language`` task configs inherit it, so every task
offers every generator with the same flags.  A generator receives only its own dataclass
(``options_of``), never the task.  Setting an option of another generator than the chosen one is
refused by name (``check_foreign_options``), as is an out-of-range value (each dataclass's
``validate``) or a fairseq generation option fairseq would fail on (``check_generation_options``).
"""
from dataclasses import dataclass, field, fields, make_dataclass

from fairseq.dataclass import FairseqDataclass

from ..errors import GeneratorError
from .registry import GENERATORS, generators_with_options, option_classes


@dataclass
class GeneratorChoice(FairseqDataclass):
    generator: str = field(default="sequence", metadata={"help": "decoding algorithm (see decoding_config)"})
    allow_unk: bool = field(
        default=False, metadata={"help": "let captions contain <unk> (default: no generator emits <unk>, <s>, "
                                         "<pad>, <mask>, <vis> or <blank>: one vocabulary rule for every row)"})
    dedup: bool = field(
        default=False, metadata={"help": "remove immediately repeated words from every caption (the "
                                         "non-autoregressive field's de-duplication post-processing, Gu et al. "
                                         "2018; not in the four papers); any generator, sequence included"})


def decoding_config() -> type:
    """``DecodingConfig``: ``GeneratorChoice`` and the options of every registered generator, with
    ``--generator``'s help listing them (called once every generator module is imported)."""
    listing = "; ".join(f"{s.name} = {s.help}" for s in GENERATORS.values())
    choice = ("generator", str, field(default="sequence", metadata={"help": f"decoding algorithm: {listing}"}))
    bases = tuple(reversed(option_classes())) + (GeneratorChoice,)
    cls = make_dataclass("DecodingConfig", [choice], bases=bases)
    cls.__module__ = __name__
    cls.__doc__ = "Every generator's options: the base of every task config of this package."
    return cls


def option_fields(cls):
    """The options a dataclass declares (not FairseqDataclass's own ``_name``)."""
    return [f for f in fields(cls) if not f.name.startswith("_")]


def options_of(cls, cfg):
    """The fields of options dataclass ``cls`` read from a task config."""
    opts = cls(**{f.name: getattr(cfg, f.name, f.default) for f in option_fields(cls)})
    opts.validate()
    return opts


def check_foreign_options(cfg, own_cls, generator: str) -> None:
    """Refuse an option that belongs to another generator than ``generator`` (set away
    from its default), naming the option and whose it is."""
    for cls in option_classes():
        if cls is own_cls:
            continue
        for f in option_fields(cls):
            value = getattr(cfg, f.name, f.default)
            if value != f.default:
                raise GeneratorError(f"--{f.name.replace('_', '-')} is an option of --generator "
                                     f"{'/'.join(generators_with_options(cls))}, "
                                     f"not of --generator {generator}")


def check_generation_options(args) -> None:
    """fairseq's own generation options (``--beam``, ``--max-len-a/b`` …), checked before decoding:
    a value fairseq would turn into an assertion, an empty caption or a crash is refused by name."""
    import math

    def get(name, default=None):
        return getattr(args, name, default)

    def flag(name):
        return "--" + name.replace("_", "-")

    for name in ("beam", "nbest"):
        if get(name) is not None and get(name) < 1:
            raise GeneratorError(f"{flag(name)} must be >= 1, got {get(name)}")
    if get("nbest") is not None and get("beam") is not None and get("nbest") > get("beam"):
        raise GeneratorError(f"--nbest {get('nbest')} exceeds --beam {get('beam')}: beam search keeps --beam "
                             f"hypotheses")
    for name in ("max_len_a", "max_len_b", "min_len", "no_repeat_ngram_size"):
        if get(name) is not None and get(name) < 0:
            raise GeneratorError(f"{flag(name)} must be >= 0, got {get(name)}")
    if get("max_len_a") == 0 and get("max_len_b") is not None and get("max_len_b") < 1:
        raise GeneratorError(f"--max-len-b {get('max_len_b')} with --max-len-a 0 leaves no room for a word: "
                             f"give --max-len-b >= 1")
    if get("max_len_a") == 0 and get("min_len", 0) and get("max_len_b") is not None \
            and get("min_len") > get("max_len_b"):
        raise GeneratorError(f"--min-len {get('min_len')} exceeds --max-len-b {get('max_len_b')}")
    for name in ("lenpen", "unkpen"):
        if get(name) is not None and not math.isfinite(get(name)):
            raise GeneratorError(f"{flag(name)} must be a finite number, got {get(name)}")
    if get("temperature") is not None and not get("temperature") > 0:
        raise GeneratorError(f"--temperature must be > 0, got {get('temperature')}")
    topk = get("sampling_topk")
    if topk is not None and topk != -1 and topk < 1:
        raise GeneratorError(f"--sampling-topk must be -1 (off) or >= 1, got {topk}")
    topp = get("sampling_topp")
    if topp is not None and topp != -1.0 and not 0 < topp <= 1:
        raise GeneratorError(f"--sampling-topp must be -1 (off) or in (0, 1], got {topp}")
