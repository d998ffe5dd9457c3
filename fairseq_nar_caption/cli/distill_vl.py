"""Sequence-level distillation for NARVL (captioning, VQA): AR teacher outputs as training targets.

    python -m fairseq_nar_caption.cli.distill_vl DATA --path ar/checkpoint_best.pt --vl-task caption \\
        [--split train] [--out-split train_distill] [--batch-size 64] \\
        [-- --image-dir ../images/pixels --patch-image-size 96 --num-bins 64 --beam 5 ...]

Decodes with the same loop as every consumer (``inference.load`` / ``decode_dataset``:
fairseq-generate arguments, ``--task vision_language``), and writes
``DATA/<vl-task>_<out-split>.tsv`` in the same OFA columns:

- caption: one row per image (the first training row of each image is decoded), the
  teacher's caption in the caption column, uniq id ``<image-id>_distill``;
- vqa: one row per question, answers ``1.0|!+<teacher answer>``.

Train NARVL on it with ``--train-subset train_distill``.  An empty teacher output
stops with the item named; nothing is written half.  Before any decoding, the output may not be
the decoded split's TSV, and an existing output this command did not write is refused unless
``--overwrite``.
"""
import os

from .. import inference
from ..errors import OptionError, OutputError
from ..files import atomic_write_text, check_output
from .common import run_main
from .distill import distill_parser, parse_distill_args, teacher_outputs

COMMAND = "nar-caption-distill-vl"


def distill_vl(data, path, vl_task, split="train", out_split="train_distill", batch_size=64, generate_args=(),
               device="cpu", overwrite=False, progress=False):
    """Decode ``<vl_task>_<split>.tsv`` with the teacher, write ``<vl_task>_<out_split>.tsv``;
    ``progress``: a bar on stderr (None: only on a terminal)."""
    if vl_task not in ("caption", "vqa"):
        raise OptionError(f"distillation is for caption and vqa (the paper's KD tasks), got {vl_task!r}")
    if batch_size < 1:
        raise OptionError(f"--batch-size must be >= 1, got {batch_size}")
    out = os.path.join(data, f"{vl_task}_{out_split}.tsv")
    if out_split == split:
        raise OutputError(f"{out}: --out-split {out_split} is the split being decoded; its rows are the input")
    check_output(out, COMMAND, inputs=[os.path.join(data, f"{vl_task}_{split}.tsv"), path], overwrite=overwrite)
    args = ["--task", "vision_language", "--vl-task", vl_task, "--path", path, "--beam", "5",
            "--max-len-b", "30", "--batch-size", str(batch_size)]
    args += list(generate_args) + (["--cpu"] if device == "cpu" else [])
    loaded = inference.load(data, args, device=device)
    loaded.task.load_dataset(split)
    ds = loaded.task.dataset(split)
    if vl_task == "caption":  # one decode per image
        first = {}
        for i, r in enumerate(ds.rows):
            first.setdefault(r.image_id, i)
        ds = ds.select(list(first.values()))
    outputs = teacher_outputs(loaded, ds, batch_size, progress, path, split, f"{vl_task}_{out_split}.tsv")
    lines = []
    for r in ds.rows:
        c = list(r.columns)
        text = outputs[r.uniq_id].replace("\t", " ")
        if vl_task == "caption":
            c[0], c[2] = f"{r.image_id}_distill", text
        else:
            c[3] = f"1.0|!+{text}"
        lines.append("\t".join(c) + "\n")
    atomic_write_text(out, "".join(lines), made_by=COMMAND)
    return out, outputs


def main(argv=None):
    p = distill_parser(__doc__, COMMAND, "AR teacher checkpoint (narvl_ar)")
    p.add_argument("--vl-task", required=True, choices=["caption", "vqa"])
    a, generate_args, progress = parse_distill_args(p, argv)
    out, outs = distill_vl(a.data, a.path, a.vl_task, a.split, a.out_split, a.batch_size, generate_args, a.device,
                           a.overwrite, progress)
    print(f"wrote {out}: {len(outs)} distilled targets")


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
