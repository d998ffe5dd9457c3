"""Score the trivial baselines (most-frequent caption, nearest neighbour) on a split.

    nar-caption-baselines DATA [--feature-files features.h5] [--split test] [--json-out F]
"""
import argparse
import json
import os

from ..data.feature_store import MultiModalFeatures, open_feature_store
from ..data.manifest import eval_item_ids, read_manifest
from ..evaluation.baselines import most_frequent_caption, nearest_neighbour_captions
from ..evaluation.coco_metrics import coco_scores


def run(data, feature_files="features.h5", key_template="{}", split="test", train_split="train",
        metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr-D")):
    train = read_manifest(os.path.join(data, f"{train_split}.tsv"))
    rows = read_manifest(os.path.join(data, f"{split}.tsv"))
    ids = eval_item_ids(rows)
    refs = {}
    for r in rows:
        refs.setdefault(r.item_id, []).append(r.caption)
    feats = MultiModalFeatures([open_feature_store(p if os.path.isabs(p) else os.path.join(data, p), key_template)
                                for p in feature_files.split(",")])
    mfc = most_frequent_caption(train)
    hyps = {"most-frequent caption": {i: mfc for i in ids},
            "nearest neighbour": nearest_neighbour_captions(feats, train, ids)}
    return {name: coco_scores(refs, h, spice="off", metrics=list(metrics)) for name, h in hyps.items()}


def main(argv=None):
    """The command's work; returns its result for callers in Python."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--feature-files", default="features.h5")
    p.add_argument("--feature-key-template", default="{}")
    p.add_argument("--split", default="test")
    p.add_argument("--train-split", default="train")
    p.add_argument("--json-out")
    a = p.parse_args(argv)
    res = run(a.data, a.feature_files, a.feature_key_template, a.split, a.train_split)
    print("| baseline | BLEU-4 | METEOR | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|")
    for name, s in res.items():
        print(f"| {name} | {100 * s['Bleu_4']:.1f} | {100 * s['METEOR']:.1f} | "
              f"{100 * s['ROUGE_L']:.1f} | {100 * s['CIDEr-D']:.1f} |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=2)
    return res



def cli_main(argv=None) -> None:
    """Console entry: returns None, so the console wrapper's sys.exit() sees success as 0."""
    main(argv)


if __name__ == "__main__":
    cli_main()
