#!/usr/bin/env python
"""Sentencepiece model + fairseq dictionary for a real-data VL folder (after the prep scripts).

Usage::

    python scripts/prepare_vl_vocab.py --data data/vl/coco --tasks caption \\
        [--vocab-size 8000] [--num-bins 1000] [--model-type bpe]

Reads the text of ``<data>/<task>_train.tsv`` for each ``--tasks`` entry (captions,
questions and answers, referring expressions, hypotheses and premises; lower-cased
as the ``vision_language`` task lower-cases its inputs) plus OFA's prompts
(``data/vl_dataset.prompt_for``), trains a sentencepiece model on it and writes, in
``--data``:

- ``spm.model`` / ``spm.vocab`` (the task's ``--bpe-model`` default);
- ``dict.txt``: the sentencepiece pieces with their training counts, then
  ``<bin_0> .. <bin_{num_bins-1}>``, then the reserved symbols ``<mask> <vis>
  <blank>`` -- the layout ``scripts/prepare_vl_toy.py`` writes for the toy data and
  the task expects (pass the same ``--num-bins`` to the task);
- ``vocab.json``: the arguments and text counts.

OFA itself uses GPT-2's byte-level BPE (50k merges); a sentencepiece BPE trained on
the task's own text is what this plugin's task reads.  All outputs are
written atomically; a missing or malformed TSV stops with the file and line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections import Counter
from typing import Iterator, List, Optional, Sequence

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.data.ofa_tsv import TASKS, iter_ofa_tsv, parse_ofa_answers, split_captions
from fairseq_nar_caption.files import atomic_write_text

from fairseq_nar_caption.data.text import RESERVED_SYMBOLS as RESERVED  # <mask> <vis> <blank>, in order


def train_texts(path: str, task: str) -> Iterator[str]:
    """The texts of one training TSV, lower-cased, as the task encodes them."""
    for row in iter_ofa_tsv(path, task, keep_image=False):
        if task == "caption":
            yield from split_captions(row["caption"])
        elif task == "vqa":
            yield row["question"]
            if row.get("answers", "").strip():
                try:
                    yield from parse_ofa_answers(row["answers"])
                except ValueError as e:
                    raise DataError(f"{path}:{row['line']}: {e}") from None
        elif task == "grounding":
            yield row["text"]
        else:
            yield row["hypothesis"]
            if row.get("premise", "").strip():
                yield row["premise"]


def prompts(tasks: Sequence[str]) -> List[str]:
    from fairseq_nar_caption.data.vl_dataset import prompt_for

    out = []
    for t in tasks:
        if t == "vqa":
            continue  # the VQA prompt is the question itself
        out.append(prompt_for(t, "x", "y") if t == "entailment" else prompt_for(t, "x"))
        if t == "entailment":
            out.append(prompt_for(t, "x"))
    return out


def build(data: str, tasks: Sequence[str], vocab_size: int, num_bins: int, model_type: str = "bpe",
          max_sentences: int = 2_000_000) -> dict:
    import sentencepiece as spm

    texts: List[str] = []
    counts = {}
    for t in tasks:
        if t not in TASKS:
            raise DataError(f"unknown task {t!r}; choose from {list(TASKS)}")
        path = os.path.join(data, f"{t}_train.tsv")
        before = len(texts)
        texts.extend(s.strip().lower() for s in train_texts(path, t) if s.strip())
        counts[t] = len(texts) - before
    if not texts:
        raise DataError(f"{data}: no training text in {[f'{t}_train.tsv' for t in tasks]}")
    # the prompts appear once per example in the encoder input: weight them so they become whole pieces
    texts += [p.strip().lower() for p in prompts(tasks)] * 50

    tmp = tempfile.mkdtemp(dir=data, prefix=".tmp-spm-")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=os.path.join(tmp, "spm"), vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, minloglevel=2,
            bos_id=-1, eos_id=-1, unk_id=0)
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "spm.model"))
        freq = Counter(p for t in texts for p in sp.encode(t, out_type=str))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
        lines = [f"{p} {freq.get(p, 0)}" for p in pieces]
        lines += [f"<bin_{i}> 0" for i in range(num_bins)] + [f"{s} 0" for s in RESERVED]
        for ext in ("model", "vocab"):
            os.replace(os.path.join(tmp, f"spm.{ext}"), os.path.join(data, f"spm.{ext}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(os.path.join(data, "dict.txt"), "\n".join(lines) + "\n")
    summary = {"tasks": list(tasks), "vocab_size": vocab_size, "pieces": len(pieces), "num_bins": num_bins,
               "model_type": model_type, "train_texts": counts}
    atomic_write_text(os.path.join(data, "vocab.json"), json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with <task>_train.tsv (output of the prep scripts)")
    p.add_argument("--tasks", nargs="+", required=True, choices=TASKS, help="whose training text to use")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--num-bins", type=int, default=1000, help="<bin_i> symbols (OFA: 1000)")
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    a = p.parse_args(argv)
    try:
        s = build(a.data, a.tasks, a.vocab_size, a.num_bins, a.model_type)
    except DataError as e:
        error_exit(e, "prepare_vl_vocab")
    print(f"{a.data}: spm.model ({s['pieces']} pieces, {a.model_type}), dict.txt (+{a.num_bins} bins, "
          f"{' '.join(RESERVED)}) from {s['train_texts']} training texts")
    return s


if __name__ == "__main__":
    main()
