"""The frame every caption generator of this package shares.

A generator is built as ``cls(models, dictionary, options, args, context)``:

- ``models``: the loaded models (one; ``max_models`` > 1 for a cascade);
- ``dictionary``: the target dictionary;
- ``options``: the generator's own options dataclass (never the task);
- ``args``: fairseq's generation config (``--max-len-b``, ``--lenpen`` …), for generators
  that run fairseq's beam search inside (outline-fill);
- ``context``: what only the task can supply (``GeneratorContext``: a loader for extra
  checkpoints such as an AR teacher, the box symbols of grounding).

The frame: ``generate`` runs the encoder once (``model.forward_encoder``) and hands its
output to the algorithm's ``decode``; the symbols a caption may never contain come from
one place (``banned_symbols``); hypotheses are built one way (``hypothesis``: words, then
</s>; ``score`` a float).  Which models a generator decodes is said once, where it registers
(``registry.py``); ``sequence``, fairseq's beam search for AR models, registers here.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from torch import Tensor

from ..data.text import RESERVED_SYMBOLS
from ..errors import GeneratorError
from .registry import register_generator


def banned_symbols(dictionary, allow_unk: bool = False) -> List[int]:
    """The one vocabulary rule: symbols no caption of any generator contains —
    <s>, <pad>, <mask>, <vis>, <blank> and (unless ``allow_unk``) <unk>.  </s> ends a
    caption; generators that place it themselves ban it inside the caption too."""
    banned = {dictionary.bos(), dictionary.pad()}
    if not allow_unk:
        banned.add(dictionary.unk())
    banned.update(dictionary.index(s) for s in RESERVED_SYMBOLS if s in dictionary.indices)
    return sorted(banned)


def dedup_hypotheses(hypos: List[List[Dict[str, Tensor]]]) -> List[List[Dict[str, Tensor]]]:
    """``--dedup``: every hypothesis without its immediately repeated tokens ("a red red ball" →
    "a red ball"), the positional scores (and a per-token attention) kept for the tokens kept;
    the ranking score and the order of the hypotheses are unchanged."""
    out = []
    for hyps in hypos:
        kept = []
        for h in hyps:
            t = h["tokens"]
            keep = torch.ones_like(t, dtype=torch.bool)
            keep[1:] = t[1:].ne(t[:-1])
            h = dict(h, tokens=t[keep], positional_scores=h["positional_scores"][keep])
            att = h.get("attention")
            if isinstance(att, Tensor) and att.dim() == 2 and att.size(-1) == t.numel():
                h["attention"] = att[:, keep]
            kept.append(h)
        out.append(kept)
    return out


@dataclass
class GeneratorContext:
    load_model: Optional[Callable[[str], torch.nn.Module]] = None  # path → model on the task's dictionary
    box_symbols: Optional[List[int]] = None  # grounding: the <bin_i> ids, in order


class CaptionGenerator:
    name: str = ""  # the --generator value (set by register_generator)
    options_cls = None  # its options dataclass (set by register_generator)
    max_models: int = 1

    def __init__(self, models, dictionary, options, args=None, context: Optional[GeneratorContext] = None,
                 allow_unk: bool = False, dedup: bool = False):
        if not 1 <= len(models) <= self.max_models:
            raise GeneratorError(f"--generator {self.name} decodes with "
                                 f"{'one model' if self.max_models == 1 else f'at most {self.max_models} models'}, "
                                 f"got {len(models)}")
        self.models, self.model = list(models), models[0]
        self.dictionary, self.options, self.args = dictionary, options, args
        self.context = context or GeneratorContext()
        self.pad, self.eos, self.unk = dictionary.pad(), dictionary.eos(), dictionary.unk()
        self.banned = banned_symbols(dictionary, allow_unk)
        self.dedup = dedup
        self.symbols_to_strip_from_output = {self.eos}

    @torch.no_grad()
    def generate(self, models, sample, **unused) -> List[List[Dict[str, Tensor]]]:
        """fairseq's generator interface: per sample, its hypotheses best first."""
        encoder_out = self.model.forward_encoder(sample["net_input"])  # once per batch
        hypos = self.decode(sample, encoder_out)
        return dedup_hypotheses(hypos) if self.dedup else hypos

    def decode(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        raise NotImplementedError

    def hypothesis(self, words, word_scores, score: float, eos_score: float = 0.0) -> Dict[str, Tensor]:
        """fairseq's hypothesis dict: ``words`` (ids without </s>) then </s>; one positional
        score per token; ``score`` the ranking score, a float."""
        words = torch.as_tensor(words, dtype=torch.long).cpu().view(-1)
        word_scores = torch.as_tensor(word_scores, dtype=torch.float).cpu().view(-1)
        if word_scores.numel() != words.numel():
            raise ValueError(f"{words.numel()} words but {word_scores.numel()} positional scores")
        return {"tokens": torch.cat([words, words.new_tensor([self.eos])]), "score": float(score),
                "positional_scores": torch.cat([word_scores, word_scores.new_tensor([eos_score])]),
                "alignment": None}


class _BannedSymbolsEnsemble(EnsembleModel):
    """fairseq's model wrapper for beam search with the banned symbols at −∞."""

    banned: Optional[Tensor] = None

    def forward_decoder(self, *args, **kwargs):
        lprobs, attn = super().forward_decoder(*args, **kwargs)
        if self.banned is not None:
            lprobs[:, self.banned.to(lprobs.device)] = -math.inf
        return lprobs, attn


class RuledSequenceGenerator(SequenceGenerator):
    """fairseq's ``SequenceGenerator`` (the ``sequence`` generator: AR beam search / greedy)
    under the same vocabulary rule as every other generator (``banned_symbols``)."""

    def __init__(self, models, tgt_dict, banned: Sequence[int] = (), dedup: bool = False, **kwargs):
        if not isinstance(models, _BannedSymbolsEnsemble):
            models = _BannedSymbolsEnsemble(list(models.models) if isinstance(models, EnsembleModel) else models)
        models.banned = torch.tensor(sorted(set(banned) - {tgt_dict.eos()}), dtype=torch.long)
        self.dedup = dedup
        super().__init__(models, tgt_dict, **kwargs)

    @torch.no_grad()
    def generate(self, models, sample, **kwargs):
        hypos = super().generate(models, sample, **kwargs)
        return dedup_hypotheses(hypos) if self.dedup else hypos


def force_words(words: int):
    """fairseq-generate arguments that force a caption of ``words`` words from beam search."""
    return ["--min-len", str(words), "--max-len-a", "0", "--max-len-b", str(words)]


def extra_models(generator) -> List[torch.nn.Module]:
    """Models a generator loaded itself (e.g. NACF's AR teacher), to be placed and timed like the
    models it decodes."""
    return [v for v in vars(generator).values() if isinstance(v, torch.nn.Module)]


register_generator("sequence", models=("ar_caption", "narvl_ar"), forced_length=force_words,
                   help="fairseq's beam search (greedy with --beam 1), for AR models")(RuledSequenceGenerator)
