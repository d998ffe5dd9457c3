"""Score the trivial baselines (most-frequent caption, nearest neighbour) on a split.

    nar-caption-baselines DATA [--feature-files features.h5] [--split test] [--json-out F]
"""
import os

from ..data.feature_store import MultiModalFeatures, open_feature_store
from ..data.manifest import eval_item_ids, item_references, read_manifest
from ..evaluation.baselines import most_frequent_caption, nearest_neighbour_captions
from ..evaluation.coco_metrics import METRICS, coco_scores
from ..files import check_output, write_json
from .common import add_feature_args, add_overwrite_arg, parser, run_main, split_name

COMMAND = "nar-caption-baselines"


def run(data, feature_files="features.h5", key_template="{}", split="test", train_split="train",
        metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr-D"), max_abs=None):
    train = read_manifest(os.path.join(data, f"{train_split}.tsv"))
    rows = read_manifest(os.path.join(data, f"{split}.tsv"))
    ids = eval_item_ids(rows)
    refs = item_references(rows)
    feats = MultiModalFeatures([open_feature_store(p if os.path.isabs(p) else os.path.join(data, p), key_template,
                                                   **({} if max_abs is None else {"max_abs": max_abs}))
                                for p in feature_files.split(",")])
    mfc = most_frequent_caption(train)
    hyps = {"most-frequent caption": {i: mfc for i in ids},
            "nearest neighbour": nearest_neighbour_captions(feats, train, ids)}
    return {name: coco_scores(refs, h, spice="off", metrics=list(metrics)) for name, h in hyps.items()}


def main(argv=None):
    """The command's work; returns its result for callers in Python."""
    p = parser(__doc__, COMMAND)
    p.add_argument("data")
    add_feature_args(p)
    p.add_argument("--split", default="test", type=split_name)
    p.add_argument("--train-split", default="train", type=split_name)
    p.add_argument("--metrics", nargs="+", default=["Bleu", "METEOR", "ROUGE_L", "CIDEr-D"], choices=METRICS,
                   help="COCO metrics (leave out METEOR to skip its ~15 s JVM start); missing columns print '-'")
    p.add_argument("--json-out")
    add_overwrite_arg(p)
    a = p.parse_args(argv)
    if a.json_out:
        check_output(a.json_out, COMMAND, overwrite=a.overwrite,
                     inputs=[os.path.join(a.data, f"{s}.tsv") for s in (a.split, a.train_split)]
                     + [f if os.path.isabs(f) else os.path.join(a.data, f) for f in a.feature_files.split(",")])
    res = run(a.data, a.feature_files, a.feature_key_template, a.split, a.train_split, a.metrics,
              max_abs=a.feature_max_abs)
    print("| baseline | BLEU-4 | METEOR | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|")
    for name, s in res.items():
        cells = [f"{100 * s[k]:.1f}" if k in s else "-" for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr-D")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json_out:
        write_json(a.json_out, res, made_by=COMMAND)
    return res


def cli_main(argv=None) -> None:
    """Console entry: returns None (exit 0); a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
