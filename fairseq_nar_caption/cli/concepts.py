"""nar-caption-concepts: the real-language benchmark from a COCO captions JSON.

    nar-caption-concepts --captions captions_val2014.json --out data/coco-concepts
        [--images 8000,500,1000] [--dim 256] [--seed 1] [--drop 0] [--distractors 0]
        [--min-count 5] [--max-words 20] [--overwrite]

Per image, one human caption is held out and becomes an unordered set of concept vectors (its
nouns, verbs and adjectives: a stand-in for a detector); the other captions are the training
targets and the references.  Real language and real ambiguity; not real pixels.  The folder is
what the ``captioning`` task, every recipe, the benchmark and the scorer read; details in
``fairseq_nar_caption/data/concepts.py``.
"""
from __future__ import annotations

import time
from typing import List, Optional

from ..data.concepts import COMMAND, ConceptConfig, build, format_summary
from .common import add_overwrite_arg, fraction, int_list, nonneg_int, parser, positive_int, run_main


def build_parser():
    p = parser(__doc__.split("\n")[0], COMMAND)
    d = ConceptConfig()
    p.add_argument("--captions", required=True, help="a COCO captions JSON (images + annotations)")
    p.add_argument("--out", required=True, help="output folder (created if needed; its parent must exist)")
    p.add_argument("--images", type=int_list(1), default=list(d.sizes), metavar="TRAIN,VAL,TEST",
                   help=f"images per split (default {','.join(map(str, d.sizes))})")
    p.add_argument("--dim", type=positive_int, default=d.dim, help=f"concept vector size D (default {d.dim})")
    p.add_argument("--seed", type=nonneg_int, default=d.seed,
                   help="the split shuffle, the held-out caption and the noise (default %(default)s)")
    p.add_argument("--drop", type=fraction, default=d.drop,
                   help="detector noise: drop each concept with this probability (one is always kept; default 0)")
    p.add_argument("--distractors", type=nonneg_int, default=d.distractors,
                   help="detector noise: add up to this many concepts co-occurring in the training split (default 0)")
    p.add_argument("--min-count", type=positive_int, default=d.min_count,
                   help="dict.txt keeps training words seen this often (default %(default)s)")
    p.add_argument("--max-words", type=positive_int, default=d.max_words,
                   help="longer training captions are dropped (default %(default)s)")
    add_overwrite_arg(p)
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    p = build_parser()
    a = p.parse_args(argv)
    if len(a.images) != 3:
        p.error(f"--images: expected three counts TRAIN,VAL,TEST, got {len(a.images)}")
    cfg = ConceptConfig(tuple(a.images), a.dim, a.seed, a.drop, a.distractors, a.min_count, a.max_words)
    start = time.time()
    summary = build(a.captions, a.out, cfg, overwrite=a.overwrite, log=lambda m: print(f"[{COMMAND}] {m}", flush=True))
    print(format_summary(a.out, summary))
    print(f"[{COMMAND}] done in {time.time() - start:.1f}s", flush=True)
    return summary


def cli_main(argv: Optional[List[str]] = None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
