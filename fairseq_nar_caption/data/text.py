"""Caption text processing shared by the real datasets and the toy benchmark.

- ``normalize_caption``: lower-case, delete punctuation (as the Karpathy COCO /
  MSR-VTT preprocessing does: ``"man's t-shirt."`` -> ``"mans tshirt"``), collapse
  whitespace.
- ``pos_tag_captions``: Penn Treebank tags from NLTK's averaged-perceptron tagger
  (the tags of the ``pos`` manifest column).
- ``build_dictionary``: a fairseq ``dict.txt`` from the TRAIN captions.
"""
from __future__ import annotations

import functools
import os
import re
import string
from collections import Counter
from typing import Iterable, List, Sequence, Tuple

from ..files import atomic_write_text
from ..errors import DataError

# ASCII punctuation is deleted outright (so "t-shirt" -> "tshirt", "man's" -> "mans");
# any other non-word, non-space character (unicode quotes, dashes, symbols) too.
_ASCII_PUNCT = str.maketrans("", "", string.punctuation)
_OTHER_PUNCT = re.compile(r"[^\w\s]")


def normalize_caption(s: str) -> str:
    """Lower-cased caption with punctuation deleted and whitespace collapsed."""
    s = _OTHER_PUNCT.sub("", s.lower().translate(_ASCII_PUNCT))
    return " ".join(s.split())


@functools.lru_cache(maxsize=1)
def _tagger():
    """NLTK's English averaged-perceptron tagger, loaded once per process."""
    from nltk.tag.perceptron import PerceptronTagger

    try:
        return PerceptronTagger()
    except LookupError as e:
        raise RuntimeError(
            "NLTK's averaged-perceptron tagger data (taggers/averaged_perceptron_tagger_eng) "
            "is not installed. Run `make test` or scripts/bootstrap.sh, which installs it "
            "offline into .venv/nltk_data via scripts/install_nltk_tagger.py."
        ) from e


def pos_tag_captions(captions: Sequence[Sequence[str]]) -> List[List[str]]:
    """Penn Treebank tags for each caption, given as a list of words.

    Identical to ``nltk.pos_tag(words)``; the tagger is loaded once and reused.
    """
    tagger = _tagger()
    tags = []
    for words in captions:
        if isinstance(words, str):
            raise TypeError(f"pos_tag_captions expects lists of words, got the string {words!r} "
                            "(pass caption.split())")
        tags.append([tag for _, tag in tagger.tag(list(words))])
    return tags


def build_dictionary(captions: Iterable[str], path: str, min_count: int = 1) -> List[Tuple[str, int]]:
    """Write a fairseq ``dict.txt`` ("word count" per line) from TRAIN captions.

    Words are counted over the whitespace-split (already normalised) captions,
    those seen fewer than ``min_count`` times are dropped, and lines are sorted by
    count (descending) then word.  Returns the written ``(word, count)`` list.
    fairseq adds its special symbols (<s>, <pad>, </s>, <unk>) itself on loading.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = Counter(word for caption in captions for word in caption.split())
    entries = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
    if not entries:
        raise DataError(f"{path}: no words occur at least {min_count} time(s) in the training captions")
    atomic_write_text(path, "".join(f"{w} {c}\n" for w, c in entries))
    return entries
