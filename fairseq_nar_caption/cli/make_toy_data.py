"""nar-caption-toy-data: generate the synthetic toy captioning benchmark.

    python -m fairseq_nar_caption.cli.make_toy_data [--out data/toy] [--seed 1]
        [--n-images-train 2000 --n-images-val 250 --n-images-test 250]
        [--n-videos-train 1000 --n-videos-val 150 --n-videos-test 150]
        [--feature-dim 128] [--force]

Deterministic in its arguments; prints "up to date" and does nothing when --out
already holds the output of the same arguments (unless --force).  Layout:
``<out>/README.md`` (written with the data) and ``fairseq_nar_caption/data/toy``.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional

from ..data.toy import ToyConfig, generate
from ..files import WRITE_ERRNOS, check_writable_folder, write_failure
from .common import error_exit, nonneg_int, parser, positive_int, run_main


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__.split("\n")[0], "nar-caption-toy-data")
    p.add_argument("--out", default="data/toy", help="output folder (default: data/toy)")
    p.add_argument("--seed", type=nonneg_int, default=1, help="generation seed (default: 1)")
    for modality, sizes in (("images", ToyConfig.n_images), ("videos", ToyConfig.n_videos)):
        for split, n in zip(("train", "val", "test"), sizes):
            p.add_argument(f"--n-{modality}-{split}", type=positive_int, default=n, metavar="N",
                           help=f"number of {split} {modality} (default: {n})")
    p.add_argument("--feature-dim", type=positive_int, default=ToyConfig.feature_dim,
                   help=f"feature dimension D (even, >= 96; default: {ToyConfig.feature_dim})")
    p.add_argument("--force", action="store_true", help="regenerate even if the output is up to date")
    return p


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = ToyConfig(
        seed=args.seed,
        n_images=(args.n_images_train, args.n_images_val, args.n_images_test),
        n_videos=(args.n_videos_train, args.n_videos_val, args.n_videos_test),
        feature_dim=args.feature_dim,
    )
    start = time.time()
    try:
        cfg.validate()
    except ValueError as e:  # sizes or a feature dim the generator cannot use
        error_exit(e)
    parent = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(parent):
        check_writable_folder(parent, args.out)
    try:
        written = generate(args.out, cfg, force=args.force, log=lambda msg: print(f"[make_toy_data] {msg}", flush=True))
    except OSError as e:  # a full disk or a read-only place, found while writing: nothing is left behind
        if e.errno in WRITE_ERRNOS:
            raise write_failure(args.out, e) from None
        raise
    if written:
        print(f"[make_toy_data] done in {time.time() - start:.1f}s", flush=True)


def cli_main(argv: Optional[List[str]] = None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, "nar-caption-toy-data")


if __name__ == "__main__":
    cli_main()
