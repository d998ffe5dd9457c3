"""Sequence-level knowledge distillation data from a trained AR model.

    nar-caption-distill DATA --path ckpt/checkpoint_best.pt [--split train] \\
        [--out-split train_distill] [--batch-size 64] [-- more fairseq-generate args]

Decodes every item of ``DATA/<split>.tsv`` once (beam 5 unless the extra
arguments say otherwise) and writes ``DATA/<out-split>.tsv``: one row per item,
the teacher's caption, POS tags from the same NLTK path the data preparation
uses.  Because its name starts with ``train``, the captioning task trains on it
with ``--train-subset train_distill``; the NAR methods read it as their
distilled targets (SAIC's hybrid distillation pairs it with the raw captions).
"""
import argparse
import os

from .. import inference
from ..data.manifest import CaptionRow, write_manifest
from ..errors import DataError
from ..data.text import pos_tag_captions
from .common import add_device_arg, run_main


def distill(data, path, split="train", out_split="train_distill", batch_size=64, generate_args=(),
            device="cpu"):
    args = ["--path", path, "--beam", "5", "--max-len-b", "30", "--batch-size", str(batch_size)]
    args += list(generate_args) + (["--cpu"] if device == "cpu" else [])
    loaded = inference.load(data, args, device=device)
    loaded.task.load_dataset(split, per="item")
    ds = loaded.task.dataset(split)
    captions = inference.decode_dataset(loaded, ds, batch_size)
    empty = [i for i, c in captions.items() if not c.strip()]
    if empty:
        raise DataError(f"{path}: the teacher produced empty captions for {len(empty)} item(s) of "
                        f"{split} (first: {empty[:5]}); refusing to write {out_split}.tsv")
    ids = list(captions)
    tags = pos_tag_captions([captions[i].split() for i in ids])
    out = os.path.join(data, f"{out_split}.tsv")
    write_manifest(out, [CaptionRow(i, captions[i], " ".join(t)) for i, t in zip(ids, tags)])
    return out, captions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--path", required=True, help="AR teacher checkpoint")
    p.add_argument("--split", default="train")
    p.add_argument("--out-split", default="train_distill")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_arg(p)
    a, extra = p.parse_known_args(argv)
    out, caps = distill(a.data, a.path, a.split, a.out_split, a.batch_size,
                        [x for x in extra if x != "--"], a.device)
    print(f"wrote {out}: {len(caps)} distilled captions")


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv)


if __name__ == "__main__":
    cli_main()
