"""Caption diversity metrics of the NACF and RDT papers.

NACF (Table 3, MSR-VTT) follows Dai, Fidler & Lin 2018 ("A neural compositional
paradigm for image captioning"):

- Novel: "the percentage of captions that have not been seen in the training data";
- Unique: "the percentage of captions that are unique among the generated
  captions" -- the number of distinct generated captions over the number of
  generated captions;
- Vocab Usage: "the percentage of words in the vocabulary that are adopted to
  generate captions" -- distinct words used over the vocabulary size.

RDT (Table VII, COCO) reports Voc-u citing the same Dai et al. definition, and
Dist-2 / Dist-3 citing Li et al. 2016 ("A diversity-promoting objective function
for neural conversation models").  rdt.txt gives no formula beyond the citation;
Li et al. count distinct n-grams over *all* generated responses (corpus level, not
averaged per caption), which is also the only reading consistent with RDT's values
(D@2 around 10%).  Dist-n here is the number of distinct n-grams over the total
number of n-grams, pooled over all generated captions; n-grams never cross caption
boundaries.  (Li et al. scale by the number of generated tokens instead, which
differs by n-1 per caption.)

Captions are compared as their words after ``text.normalize_caption`` (lower-cased,
punctuation deleted), the normalisation of the project's manifests, so results
files with punctuation are counted like the model's own output.  fairseq's special
symbols (``<unk>`` etc.) are not words and are dropped first.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from ..data.text import normalize_caption

# fairseq's special symbols: not vocabulary words (a dict.txt does not list them).
_SPECIAL_SYMBOLS = frozenset({"<s>", "<pad>", "</s>", "<unk>"})


def caption_words(caption: str) -> Tuple[str, ...]:
    """The normalised words of a caption, fairseq special symbols removed."""
    return tuple(normalize_caption(" ".join(w for w in caption.split() if w not in _SPECIAL_SYMBOLS)).split())


def distinct_n(captions: Iterable[Tuple[str, ...]], n: int) -> float:
    """Distinct n-grams / all n-grams over the captions (0.0 when there are none)."""
    ngrams = [c[k:k + n] for c in captions for k in range(len(c) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def repeat_rate(hyps: Iterable[str]) -> float:
    """Fraction of captions with an immediately repeated word ("a dog dog runs"): the
    classic failure of non-autoregressive decoders (0.0 for no captions)."""
    caps = [caption_words(c) for c in hyps]
    return sum(any(a == b for a, b in zip(c, c[1:])) for c in caps) / len(caps) if caps else 0.0


def unk_rate(hyps: Iterable[str]) -> float:
    """Fraction of captions containing ``<unk>`` (the vocabulary rule forbids it)."""
    caps = list(hyps)
    return sum("<unk>" in c.split() for c in caps) / len(caps) if caps else 0.0


def diversity(
    hyps: Mapping[object, str],
    train_captions: Optional[Iterable[str]] = None,
    vocab_size: Optional[int] = None,
) -> Dict[str, Optional[float]]:
    """Diversity of one generated caption per item.

    Args:
        hyps: item id -> generated caption.
        train_captions: the training captions, for Novel (None: Novel is None).
        vocab_size: the model's vocabulary size (word entries of its dict.txt),
            for Vocab_usage (None: Vocab_usage is None).

    Returns fractions in [0, 1] (papers print them x100):
        ``Novel``: generated captions (counted with repeats) that are not a training caption;
        ``Unique``: distinct generated captions / generated captions;
        ``Vocab_words``: the number of distinct words used (an int);
        ``Vocab_usage``: ``Vocab_words / vocab_size``;
        ``Dist-2``, ``Dist-3``: corpus-level distinct-n (see the module docstring);
        ``Repeat``: captions with an immediately repeated word (``repeat_rate``);
        ``Unk``: captions containing <unk> (``unk_rate``).
    """
    if not hyps:
        raise ValueError("diversity: no generated captions")
    if vocab_size is not None and vocab_size <= 0:
        raise ValueError(f"diversity: vocab_size must be positive, got {vocab_size}")
    captions: List[Tuple[str, ...]] = [caption_words(c) for c in hyps.values()]
    vocab_words = len({w for c in captions for w in c})

    novel = None
    if train_captions is not None:
        seen = {caption_words(c) for c in train_captions}
        novel = sum(c not in seen for c in captions) / len(captions)

    return {
        "Novel": novel,
        "Unique": len(set(captions)) / len(captions),
        "Vocab_words": vocab_words,
        "Vocab_usage": vocab_words / vocab_size if vocab_size is not None else None,
        "Dist-2": distinct_n(captions, 2),
        "Dist-3": distinct_n(captions, 3),
        "Repeat": repeat_rate(hyps.values()),
        "Unk": unk_rate(hyps.values()),
    }
