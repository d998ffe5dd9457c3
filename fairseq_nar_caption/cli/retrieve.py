"""Image-to-text retrieval over the training captions: the retrieved-sentence file of RDT.

    nar-caption-retrieve DATA [--splits train,val,test] [--train-split train] [--k 20]
        [--feature-files features.h5] [--feature-key-template '{}'] [--feature-max-abs 1e4]
        [--ridge 1.0] [--pooling mean|flat] [--backend sparse|faiss] [--block-mb 256]
        [--out DATA/retrieval.json] [--overwrite] [--no-progress]

How the training sentences are ranked (a closed-form stand-in for the paper's CLIP similarity:
a ridge map from standardised pooled features to TF-IDF bags of words, cosine similarity; sparse
or faiss search in bounded blocks; a training item never retrieves its own captions) is
``data/ranking.py``'s.

Output: ``{"embedding": ..., "k": K, "settings": {...}, "fingerprint": {...}, "items": {item_id: [K
sentences, best first]}}`` for every item of the given splits, and beside it
``retrieval.ranker.npz`` (mean, std, W, the sentences, the settings and the fingerprint:
``Ranker``), with which ``hub.py`` retrieves for new images.  The fingerprint binds both files to
the data they were made on (``data/retrieval.py``: the manifests' sha256, what identifies each
feature store); the task and the hub refuse them on other data.

Safety: the options are checked while parsing (``--k`` >= 1, ``--ridge`` >= 0, ``--block-mb`` > 0,
``--splits`` / ``--train-split`` names of manifests that exist); both outputs are checked before
any work (``files.check_output``: neither is one of the manifests or feature files read; an
existing file is replaced only if this command made it, or with ``--overwrite``); both are
written at the end, each through a temporary file of its own renamed when whole, the ranker
only together with the retrieval file.  A full disk, Ctrl-C or SIGTERM leaves nothing under
either name (exit 1 / 130 / 143, one line).  Progress bars (pooling, search blocks) go to
stderr when it is a terminal; ``--no-progress`` turns them off.
"""
import argparse
import math
import os

from ..data.ranking import BACKENDS, EMBEDDING, ranker_path, retrieve_with_ranker
from ..data.retrieval import retrieval_document
from ..files import atomic_path, check_output, write_json
from . import common
from .common import run_main

COMMAND = "nar-caption-retrieve"


def _finite(check):
    def finite(text: str):
        v = check(text)
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return v

    return finite


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__, COMMAND)
    p.add_argument("data", help="data folder: <split>.tsv manifests and the feature files")
    p.add_argument("--splits", type=common.name_list, default="train,val,test",
                   help="comma-separated splits whose items get retrieved sentences (default %(default)s)")
    p.add_argument("--train-split", type=common.split_name, default="train",
                   help="the caption pool and the ridge fit (default %(default)s)")
    p.add_argument("--k", type=common.positive_int, default=20, help="sentences per item (default %(default)s)")
    common.add_feature_args(p)
    p.add_argument("--ridge", type=_finite(common.nonneg_float), default=1.0, help="ρ (default %(default)s)")
    p.add_argument("--pooling", default="mean", choices=["mean", "flat"],
                   help="image vector: mean over tokens, or all tokens concatenated "
                        "(fixed grids; n_items x N·D floats)")
    p.add_argument("--backend", default="sparse", choices=BACKENDS,
                   help="sparse: chunked TF-IDF-space products; "
                        "faiss: IndexFlatIP over the captions mapped to feature space")
    p.add_argument("--block-mb", type=_finite(common.positive_float), default=256,
                   help="largest score block (MiB, default %(default)s)")
    p.add_argument("--out", default=None, help="default DATA/retrieval.json; the ranker goes beside it")
    common.add_overwrite_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked before any work: usage errors are one line, exit 2."""
    p = build_parser()
    a = p.parse_args(argv)
    if not os.path.isdir(a.data):
        p.error(f"argument data: {a.data} is not a folder")
    for s in a.splits:
        try:
            common.split_name(s)
        except argparse.ArgumentTypeError as e:
            p.error(f"argument --splits: {e}")
    a.splits = list(dict.fromkeys(a.splits))
    for flag, split in [("--train-split", a.train_split)] + [("--splits", s) for s in a.splits]:
        path = os.path.join(a.data, f"{split}.tsv")
        if not os.path.isfile(path):
            p.error(f"argument {flag}: split {split} has no manifest {path}")
    if a.backend == "faiss":
        import importlib.util

        if importlib.util.find_spec("faiss") is None:
            p.error("argument --backend: faiss is not installed here (pip install faiss-cpu), use --backend sparse")
    a.out = a.out or os.path.join(a.data, "retrieval.json")
    return a


def main(argv=None):
    a = parse_args(argv)
    out, ranker_out = a.out, ranker_path(a.out)
    inputs = [os.path.join(a.data, f"{s}.tsv") for s in [a.train_split, *a.splits]]
    inputs += [p if os.path.isabs(p) else os.path.join(a.data, p) for p in a.feature_files.split(",")]
    for path in (out, ranker_out):  # before any work
        check_output(path, COMMAND, inputs=inputs, overwrite=a.overwrite)
    progress = False if a.no_progress else None
    ranker, items = retrieve_with_ranker(a.data, a.splits, a.k, a.feature_files, a.feature_key_template, a.ridge,
                                         a.train_split, a.pooling, a.backend, a.block_mb, progress,
                                         a.feature_max_abs or None)
    doc = retrieval_document(items, ranker.fingerprint, a.k, ranker.settings, EMBEDDING)
    # both or neither: the ranker is renamed into place only once the retrieval file is
    with atomic_path(ranker_out, made_by=COMMAND) as tmp:
        with open(tmp, "wb") as f:
            f.write(ranker.npz_bytes())
        write_json(out, doc, made_by=COMMAND, indent=None)
    print(f"wrote {out}: top-{a.k} sentences for {len(items)} items; ranker {ranker_out}")


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
