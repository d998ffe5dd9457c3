"""Caption text processing shared by the real datasets and the toy benchmark.

- ``normalize_caption``: lower-case, delete punctuation (as the Karpathy COCO /
  MSR-VTT preprocessing does: ``"man's t-shirt."`` -> ``"mans tshirt"``), collapse
  whitespace.
- ``pos_tag_captions``: Penn Treebank tags from NLTK's averaged-perceptron tagger
  (the tags of the ``pos`` manifest column).
- ``build_dictionary``: a fairseq ``dict.txt`` from the TRAIN captions;
  ``read_dictionary``: the entries of a ``dict.txt``, every line checked as fairseq reads it
  (``<word> <count> [#fairseq:overwrite]``): a line without its count, a repeated word, a blank
  line or a tab is one DataError naming the file and the line (a leading byte-order mark is
  accepted); ``load_dictionary``: those entries as a fairseq ``Dictionary`` (``RESERVED_SYMBOLS``
  are appended by the tasks).
"""
from __future__ import annotations

import functools
import re
import string
from collections import Counter
from typing import Iterable, List, Optional, Sequence, Tuple

from ..errors import DataError
from ..files import atomic_write_text, read_text

# appended to every dictionary after dict.txt's words (and a task's own symbols), so AR teachers and
# every NAR model share one index space: the masked LM's mask, NACF's visual-word slot, CTC's blank
RESERVED_SYMBOLS = ("<mask>", "<vis>", "<blank>")

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


def build_dictionary(captions: Iterable[str], path: str, min_count: int = 1,
                     made_by: Optional[str] = None) -> List[Tuple[str, int]]:
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
    atomic_write_text(path, "".join(f"{w} {c}\n" for w, c in entries), made_by=made_by)
    return entries


OVERWRITE_FLAG = "#fairseq:overwrite"


def read_dictionary(path: str) -> List[Tuple[str, int]]:
    """``(word, count)`` per line of a fairseq ``dict.txt``, checked line by line (module docstring)."""
    entries: List[Tuple[str, int]] = []
    first: dict = {}
    for lineno, line in enumerate(read_text(path, "dictionary").splitlines(), start=1):
        where = f"{path}:{lineno}"
        text = line.rstrip()
        if not text:
            raise DataError(f"{where}: blank line; every line is '<word> <count>'")
        if "\t" in text:
            raise DataError(f"{where}: {line!r} holds a tab; fairseq separates '<word> <count>' by one space")
        parts = text.rsplit(" ", 1)
        overwrite = len(parts) == 2 and parts[1] == OVERWRITE_FLAG
        if overwrite:
            parts = parts[0].rsplit(" ", 1)
        if len(parts) != 2 or not parts[0]:
            raise DataError(f"{where}: {line!r} is not '<word> <count>' (the count is missing)")
        word, count = parts
        try:
            n = int(count)
        except ValueError:
            raise DataError(f"{where}: {line!r}: the count {count!r} is not an integer") from None
        if word in first and not overwrite:
            raise DataError(f"{where}: the word {word!r} repeats line {first[word]} (mark a deliberate repeat "
                            f"with '{OVERWRITE_FLAG}')")
        first.setdefault(word, lineno)
        entries.append((word, n))
    if not entries:
        raise DataError(f"{path}: dictionary has no words")
    return entries


def load_dictionary(path: str):
    """A fairseq ``Dictionary`` of a checked ``dict.txt`` (fairseq's special symbols first, as
    ``Dictionary.load`` gives)."""
    import io

    from fairseq.data import Dictionary

    read_dictionary(path)
    d = Dictionary()
    d.add_from_file(io.StringIO(read_text(path, "dictionary")))
    return d
