"""Score fairseq-generate output of a vision-language split (NARVL tasks).

    python -m fairseq_nar_caption.cli.score_vl --task caption|vqa|grounding|entailment \\
        --tsv SPLIT.tsv --generate-output gen.txt [--image-dir DIR] [--refs refs.json] \\
        [--num-bins 1000] [--metrics Bleu CIDEr-D ...] [--name NAME] [--json-out S.json]

Hypotheses are fairseq-generate's ``D-<i>\\t<score>\\t<text>`` lines (the text after
``--post-process sentencepiece``), where ``i`` is the 0-based index of the split
TSV's data rows (``data/ofa_tsv.py``; a header line is detected and skipped).
Every row needs exactly one ``D`` line: missing, duplicate (e.g. ``--nbest`` > 1)
or out-of-range ids are refused with one error naming the file and the id.

Metrics (``scores`` in the JSON):

- caption: COCO metrics from ``evaluation/coco_metrics.coco_scores`` (CIDEr-D etc.)
  of one caption per image -- the hypothesis of the image's first TSV row --
  against ``--refs`` (a COCO caption file such as ``test_refs.json``; every image of
  it must be in the TSV) or, without ``--refs``, against every caption of that
  image in the TSV (``&&``-joined fields split).
- vqa: ``soft_accuracy`` (mean ``vl_metrics.vqa_score``: the confidence of the
  normalised predicted answer in the row's answer field) and ``exact_accuracy``
  (the normalised prediction is one of the row's highest-confidence answers).
- grounding: ``acc@0.5`` (IoU >= 0.5) and ``mean_iou``.  The hypothesis must hold
  exactly four ``<bin_k>`` tokens (``k < --num-bins``), de-quantised with the
  image's width and height (``data/boxes.dequantize_box``); other hypotheses are
  misses and are counted in ``malformed``.  Image sizes come from
  ``--image-dir/<image_id>.png`` (or ``.jpg``) or else the TSV's base64 image column.
- entailment: ``accuracy`` of the lower-cased, stripped hypothesis against the label.

Prints a one-line summary; ``--json-out`` is written atomically.  ``score_vl(...)``
is the same as a Python function.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Dict, List, Optional, Sequence

from ..data.boxes import dequantize_box, iou, parse_box_tokens
from ..errors import DataError
from ..data.ofa_tsv import (TASKS, find_image_file, image_size, parse_box_field, parse_ofa_answers, read_ofa_tsv,
                             split_captions)
from ..evaluation.coco_metrics import METRICS, coco_scores
from ..evaluation.references import load_coco_refs
from ..evaluation.vl_metrics import accuracy, grounding_hits, normalize_answer, vqa_score
from ..files import check_output, write_json
from .common import add_overwrite_arg, parser, positive_int, run_main

COMMAND = "nar-caption-score-vl"


def read_detok_hypotheses(path: str, num_rows: int) -> List[str]:
    """The ``D-<i>`` texts of fairseq-generate's stdout, as a list indexed by ``i``.

    Refuses (DataError naming the file and the id) a malformed ``D`` line, an id
    outside ``[0, num_rows)``, an id seen twice, and ids without a line.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: fairseq-generate output not found")
    hyps: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.startswith("D-"):
                continue
            fields = line.rstrip("\r\n").split("\t", 2)
            try:
                i = int(fields[0][2:])
                float(fields[1])
            except (ValueError, IndexError):
                raise DataError(f"{path}:{lineno}: malformed line {line.rstrip()!r} "
                                "(expected 'D-<id>\\t<score>\\t<text>')") from None
            if not 0 <= i < num_rows:
                raise DataError(f"{path}:{lineno}: sample id {i} is outside the {num_rows} rows of the split TSV "
                                "(wrong --tsv?)")
            if i in hyps:
                raise DataError(f"{path}:{lineno}: sample id {i} appears twice (decode with --nbest 1)")
            hyps[i] = fields[2] if len(fields) == 3 else ""
    if not hyps:
        raise DataError(f"{path}: no 'D-<id>' lines (is this fairseq-generate's stdout?)")
    missing = [i for i in range(num_rows) if i not in hyps]
    if missing:
        raise DataError(f"{path}: no hypothesis for sample id {missing[0]} ({len(missing)} of {num_rows} rows "
                        f"missing, e.g. {missing[:5]}; did fairseq-generate drop a batch?)")
    return [hyps[i] for i in range(num_rows)]


def _where(tsv: str, row: dict) -> str:
    return f"{tsv}:{row['line']}: item {row.get('uniq_id', row['image_id'])}"


def _score_caption(rows, hyps, tsv, refs_path, metrics, spice) -> dict:
    first_hyp: Dict[str, str] = {}
    tsv_refs: Dict[str, List[str]] = {}
    for row, h in zip(rows, hyps):
        first_hyp.setdefault(row["image_id"], h)
        tsv_refs.setdefault(row["image_id"], []).extend(split_captions(row["caption"]))
    refs = load_coco_refs(refs_path) if refs_path else tsv_refs
    scores = coco_scores(refs, first_hyp, spice=spice, metrics=metrics)
    skipped = scores.pop("skipped")
    return {"num_images": len(first_hyp), "refs": refs_path or "tsv", "scores": scores, "skipped": skipped}


def _score_vqa(rows, hyps, tsv) -> dict:
    soft, exact = [], []
    for row, h in zip(rows, hyps):
        if not row.get("answers", "").strip():
            raise DataError(f"{_where(tsv, row)}: no answers to score against (an unannotated split?)")
        try:
            answers = parse_ofa_answers(row["answers"])
        except ValueError as e:
            raise DataError(f"{_where(tsv, row)}: {e}") from None
        soft.append(vqa_score(h, answers))
        top = max(answers.values())
        exact.append(normalize_answer(h) in {normalize_answer(a) for a, c in answers.items() if c == top})
    return {"scores": {"soft_accuracy": sum(soft) / len(soft), "exact_accuracy": sum(exact) / len(exact)}}


def _image_size(row: dict, tsv: str, image_dir: Optional[str], cache: Dict[str, tuple]) -> tuple:
    key = row["image_id"]
    if key not in cache:
        if image_dir:
            from PIL import Image

            path = find_image_file(image_dir, key)
            with Image.open(path) as im:
                cache[key] = im.size
        elif row.get("image"):
            try:
                cache[key] = image_size(row["image"])
            except ValueError as e:
                raise DataError(f"{_where(tsv, row)}: image column: {e} (pass --image-dir for id-only TSVs)") from None
        else:
            raise DataError(f"{_where(tsv, row)}: no image column; pass --image-dir to find <image_id>.png")
    return cache[key]


def _score_grounding(rows, hyps, tsv, image_dir, num_bins) -> dict:
    preds, gts, sizes, malformed = [], [], {}, 0
    for row, h in zip(rows, hyps):
        try:
            gts.append(parse_box_field(row["box"]))
        except ValueError as e:
            raise DataError(f"{_where(tsv, row)}: {e}") from None
        width, height = _image_size(row, tsv, image_dir, sizes)
        bins = parse_box_tokens(h)
        too_big = [k for k in bins if k >= num_bins]
        if too_big:
            raise DataError(f"{_where(tsv, row)}: hypothesis has <bin_{too_big[0]}> but --num-bins is {num_bins}")
        if len(bins) != 4:
            malformed += 1
            preds.append(None)
        else:
            preds.append(dequantize_box(bins, width, height, num_bins))
    hits = grounding_hits(preds, gts, thr=0.5)
    ious = [iou(p, g) if p is not None else 0.0 for p, g in zip(preds, gts)]
    return {"scores": {"acc@0.5": sum(hits) / len(hits), "mean_iou": sum(ious) / len(ious)}, "malformed": malformed}


def _score_entailment(rows, hyps) -> dict:
    golds = [row["label"].strip().lower() for row in rows]
    return {"scores": {"accuracy": accuracy([h.strip().lower() for h in hyps], golds)}}


def score_vl(task: str, tsv: str, generate_output: str, image_dir: Optional[str] = None,
             refs: Optional[str] = None, num_bins: int = 1000, metrics: Sequence[str] = METRICS,
             spice: str = "auto", name: Optional[str] = None) -> dict:
    """Score one VL split; the arguments mirror the CLI.  Returns the JSON-able result:
    ``{"name", "task", "tsv", "generate_output", "num_items", "scores", ...}`` with raw
    fractions (CIDEr-D raw, as ``coco_scores``); grounding adds ``malformed``,
    caption ``num_images``, ``refs`` and ``skipped``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
    if refs and task != "caption":
        raise DataError("--refs applies to --task caption only")
    rows = read_ofa_tsv(tsv, task, keep_image=(task == "grounding" and not image_dir))
    hyps = read_detok_hypotheses(generate_output, len(rows))
    if task == "caption":
        part = _score_caption(rows, hyps, tsv, refs, metrics, spice)
    elif task == "vqa":
        part = _score_vqa(rows, hyps, tsv)
    elif task == "grounding":
        part = _score_grounding(rows, hyps, tsv, image_dir, num_bins)
    else:
        part = _score_entailment(rows, hyps)
    return {"name": name or os.path.basename(generate_output), "task": task, "tsv": tsv,
            "generate_output": generate_output, "num_items": len(rows), **part}


def summary_line(result: dict) -> str:
    """One line: name, task, item count, every score (x100, 1 decimal; CIDEr-D too, as papers print it)."""
    cells = [f"{k}={100 * v:.1f}" for k, v in result["scores"].items()]
    if "malformed" in result:
        cells.append(f"malformed={result['malformed']}")
    return f"{result['name']}  {result['task']}  n={result['num_items']}  " + "  ".join(cells)


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__.split("\n\n")[0], COMMAND)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--tsv", required=True, help="the decoded split's TSV (sample id i = its i-th data row)")
    p.add_argument("--generate-output", required=True, help="fairseq-generate stdout (D-<id> lines)")
    p.add_argument("--image-dir", help="folder of <image_id>.png images (TSVs without a base64 image column)")
    p.add_argument("--refs", help="caption: COCO caption references (default: the TSV's captions per image)")
    p.add_argument("--num-bins", type=positive_int, default=1000, help="grounding: number of <bin_k> tokens (default 1000)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                   help="caption: COCO metrics to compute (leave out METEOR to skip its ~15 s JVM start)")
    p.add_argument("--spice", choices=("auto", "off", "on"), default="auto", help="caption: SPICE (see cli/score.py)")
    p.add_argument("--name", help="label of the result (default: the generate output's file name)")
    p.add_argument("--json-out", help="write the result as JSON here (atomically)")
    add_overwrite_arg(p)
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.json_out:
        check_output(args.json_out, COMMAND, inputs=[args.tsv, args.generate_output, args.refs], overwrite=args.overwrite)
    logging.getLogger("PIL").setLevel(logging.INFO)  # PIL's per-chunk DEBUG lines when the root logger is DEBUG
    result = score_vl(args.task, args.tsv, args.generate_output, image_dir=args.image_dir, refs=args.refs,
                      num_bins=args.num_bins, metrics=args.metrics, spice=args.spice, name=args.name)
    print(summary_line(result))
    if args.json_out:
        write_json(args.json_out, result, made_by=COMMAND)
    return result


def cli_main(argv: Optional[List[str]] = None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
