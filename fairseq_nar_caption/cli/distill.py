"""Sequence-level knowledge distillation data from a trained AR model.

    nar-caption-distill DATA --path ckpt/checkpoint_best.pt [--split train] \\
        [--out-split train_distill] [--batch-size 64] [--overwrite] [-- more fairseq-generate args]

Decodes every item of ``DATA/<split>.tsv`` once (beam 5 unless the extra
arguments say otherwise) and writes ``DATA/<out-split>.tsv``: one row per item,
the teacher's caption, POS tags from the same NLTK path the data preparation
uses.  Because its name starts with ``train``, the captioning task trains on it
with ``--train-subset train_distill``; the NAR methods read it as their
distilled targets (SAIC's hybrid distillation pairs it with the raw captions).

Before any decoding: the output split may not be the decoded split, and an existing
``<out-split>.tsv`` that this command did not write (the human captions of ``train``,
the test manifest the scores are computed against) is refused unless ``--overwrite``.
"""
import os

from .. import inference
from ..data.manifest import CaptionRow, write_manifest
from ..data.text import pos_tag_captions
from ..errors import DataError, OptionError, OutputError
from ..files import check_output
from ..progress import progress_bar
from .common import add_device_arg, add_overwrite_arg, parser, positive_int, run_main, split_name

COMMAND = "nar-caption-distill"


def check_distill_output(data: str, path: str, split: str, out_split: str, overwrite: bool = False) -> str:
    """``DATA/<out_split>.tsv`` if distillation may write it (see the module docstring)."""
    out = os.path.join(data, f"{out_split}.tsv")
    if out_split == split:
        raise OutputError(f"{out}: --out-split {out_split} is the split being decoded; its captions are the input")
    return check_output(out, COMMAND, inputs=[os.path.join(data, f"{split}.tsv"), path,
                                              os.path.join(data, "dict.txt")], overwrite=overwrite)


def teacher_outputs(loaded, ds, batch_size: int, progress, path: str, split: str, out_name: str):
    """item id → the teacher's output for every item of ``ds`` (a progress bar on a terminal); an
    empty output is refused naming the checkpoint, the split and the file not written."""
    with progress_bar(len(ds), f"distill {split}", "item", enabled=progress) as bar:
        outputs = inference.decode_dataset(loaded, ds, batch_size, progress=bar.update)
    empty = [i for i, c in outputs.items() if not c.strip()]
    if empty:
        raise DataError(f"{path}: the teacher produced empty outputs for {len(empty)} item(s) of {split} "
                        f"(first: {empty[:5]}); refusing to write {out_name}")
    return outputs


def distill(data, path, split="train", out_split="train_distill", batch_size=64, generate_args=(),
            device="cpu", overwrite=False, progress=False):
    """Decode ``split`` with the teacher and write ``<out_split>.tsv``; ``progress``: a bar on stderr
    (None: only on a terminal)."""
    if batch_size < 1:
        raise OptionError(f"--batch-size must be >= 1, got {batch_size}")
    out = check_distill_output(data, path, split, out_split, overwrite)
    args = ["--path", path, "--beam", "5", "--max-len-b", "30", "--batch-size", str(batch_size)]
    args += list(generate_args) + (["--cpu"] if device == "cpu" else [])
    loaded = inference.load(data, args, device=device)
    loaded.task.load_dataset(split, per="item")
    ds = loaded.task.dataset(split)
    captions = teacher_outputs(loaded, ds, batch_size, progress, path, split, f"{out_split}.tsv")
    ids = list(captions)
    tags = pos_tag_captions([captions[i].split() for i in ids])
    write_manifest(out, [CaptionRow(i, captions[i], " ".join(t)) for i, t in zip(ids, tags)], made_by=COMMAND)
    return out, captions


def distill_parser(doc: str, command: str, teacher: str):
    """The options both distillation commands share (``teacher``: the checkpoint's help)."""
    p = parser(doc, command)
    p.add_argument("data")
    p.add_argument("--path", required=True, help=teacher)
    p.add_argument("--split", default="train", type=split_name)
    p.add_argument("--out-split", default="train_distill", type=split_name)
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_device_arg(p)
    add_overwrite_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    return p


def parse_distill_args(p, argv):
    """(options, the fairseq-generate arguments after them, the progress setting)."""
    a, extra = p.parse_known_args(argv)
    return a, [x for x in extra if x != "--"], False if a.no_progress else None


def main(argv=None):
    a, generate_args, progress = parse_distill_args(distill_parser(__doc__, COMMAND, "AR teacher checkpoint"), argv)
    out, caps = distill(a.data, a.path, a.split, a.out_split, a.batch_size, generate_args, a.device, a.overwrite,
                        progress)
    print(f"wrote {out}: {len(caps)} distilled captions")


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
