"""Decoding options: one dataclass per generator, mixed into every task's config.

``--generator`` and each option below are declared once, here; the ``captioning`` and
``vision_language`` task configs inherit ``DecodingConfig``, so every task offers every
generator with the same flags.  A generator receives only its own dataclass
(``options_of``), never the task.  Setting an option of another generator than the
chosen one is refused by name (``check_foreign_options``), as is an out-of-range value
(each dataclass's ``validate``).
"""
from dataclasses import dataclass, field, fields
from typing import Optional

from fairseq.dataclass import FairseqDataclass

from ..errors import GeneratorError


@dataclass
class GeneratorChoice(FairseqDataclass):
    generator: str = field(
        default="sequence", metadata={"help": "decoding algorithm: sequence (fairseq's beam search, AR models), "
                                              "mp, ef, l2r, ct-mp, ct-ef, ct-l2r (NACF), outline-fill (SAIC), "
                                              "ctc (NARVL), diffusion (RDT)"})
    allow_unk: bool = field(
        default=False, metadata={"help": "let captions contain <unk> (default: no generator emits <unk>, <s>, "
                                         "<pad>, <mask>, <vis> or <blank>: one vocabulary rule for every row)"})
    dedup: bool = field(
        default=False, metadata={"help": "remove immediately repeated words from every caption (the "
                                         "non-autoregressive field's de-duplication post-processing, Gu et al. "
                                         "2018; not in the four papers); any generator, sequence included"})


@dataclass
class MaskPredictOptions(FairseqDataclass):
    """NACF (generators/mask_predict.py): mp, ef, l2r, ct-mp, ct-ef, ct-l2r."""
    generators = ("mp", "ef", "l2r", "ct-mp", "ct-ef", "ct-l2r")
    nar_iterations: int = field(default=5, metadata={"help": "T: decoder passes of MP (Eq. 14)"})
    nar_q: int = field(default=1, metadata={"help": "q: tokens fixed per pass by EF/L2R (Eq. 15, 17)"})
    length_beam: int = field(default=6, metadata={"help": "B: most probable lengths decoded in parallel"})
    nar_min_length: int = field(default=1, metadata={"help": "shortest caption length the length beam considers"})
    nar_max_length: int = field(default=0, metadata={"help": "longest caption length the length beam considers "
                                                             "(0 = the model's range; min = max forces a length)"})
    nar_skip_template_revisit: bool = field(
        default=False, metadata={"help": "CT-EF/CT-L2R: skip the last pass re-predicting template words (Eq. 16)"})
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


@dataclass
class OutlineFillOptions(FairseqDataclass):
    """SAIC (generators/outline_fill.py): outline-fill."""
    generators = ("outline-fill",)
    outline_beam: int = field(default=5, metadata={"help": "M_out: Outliner beam size"})
    fill_beam: int = field(default=1, metadata={"help": "M_fill <= M_out: top Outliner hypotheses the Filler "
                                                        "completes (ranked by Eq. 10)"})

    def validate(self):
        if not 1 <= self.fill_beam <= self.outline_beam:
            raise GeneratorError(f"need M_out >= M_fill >= 1 (SAIC Section 4.3), got --outline-beam "
                                 f"{self.outline_beam} --fill-beam {self.fill_beam}")


@dataclass
class CTCOptions(FairseqDataclass):
    """NARVL (generators/ctc.py): ctc."""
    generators = ("ctc",)
    ctc_beam: int = field(default=1, metadata={"help": "1 = argmax + collapse; K > 1 = CTC prefix beam search "
                                                       "(NARVL Table 11)"})
    ctc_no_merge: bool = field(default=False, metadata={"help": "drop blanks but keep repeats (for the "
                                                                "--loss ce ablation)"})
    ctc_refine_passes: int = field(
        default=0, metadata={"help": "hybrid decoding (not in the paper): K further decoder passes, pass k showing "
                                     "the k/K · --ctc-refine-show most confident frames of the draft in place of "
                                     "their queries (a model trained with --glat-ratio); 0 = one-pass CTC"})
    ctc_refine_show: float = field(
        default=0.5, metadata={"help": "fraction of the N frames the last refinement pass shows"})

    def validate(self):
        if self.ctc_beam < 1:
            raise GeneratorError(f"--ctc-beam must be >= 1, got {self.ctc_beam}")
        if self.ctc_refine_passes < 0:
            raise GeneratorError(f"--ctc-refine-passes must be >= 0, got {self.ctc_refine_passes}")
        if not 0 < self.ctc_refine_show <= 1:
            raise GeneratorError(f"--ctc-refine-show must be in (0, 1], got {self.ctc_refine_show}")


@dataclass
class DiffusionOptions(FairseqDataclass):
    """RDT (generators/diffusion.py): diffusion."""
    generators = ("diffusion",)
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
        if not 0 < self.diffusion_max_time <= 1:
            raise GeneratorError(f"--diffusion-max-time must be in (0, 1], got {self.diffusion_max_time}")
        if self.diffusion_sampler not in ("ddpm", "ddim"):
            raise GeneratorError(f"--diffusion-sampler must be ddpm or ddim, got {self.diffusion_sampler!r}")
        if self.diffusion_sampler == "ddim" and self.diffusion_noise:
            raise GeneratorError("--diffusion-noise adds Eq. 7's noise to the ddpm sampler; ddim is deterministic")
        if self.diffusion_words not in ("nearest-code", "argmax"):
            raise GeneratorError(f"--diffusion-words must be nearest-code or argmax, got {self.diffusion_words!r}")


@dataclass
class DecodingConfig(DiffusionOptions, CTCOptions, OutlineFillOptions, MaskPredictOptions, GeneratorChoice):
    """Every generator's options: the base of every task config of this package."""


OPTION_CLASSES = (MaskPredictOptions, OutlineFillOptions, CTCOptions, DiffusionOptions)


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
    for cls in OPTION_CLASSES:
        if cls is own_cls:
            continue
        for f in option_fields(cls):
            value = getattr(cfg, f.name, f.default)
            if value != f.default:
                raise GeneratorError(f"--{f.name.replace('_', '-')} is an option of --generator "
                                     f"{'/'.join(cls.generators)}, "
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
