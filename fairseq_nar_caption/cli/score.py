"""nar-caption-score: COCO metrics and diversity of generated captions.

    nar-caption-score --refs REFS.json (--generate-output OUT.txt | --results RESULTS.json)
        [--manifest SPLIT.tsv] [--train-manifest TRAIN.tsv] [--dict dict.txt]
        [--spice auto|off|on] [--metrics Bleu METEOR ROUGE_L CIDEr-D] [--name LABEL]
        [--json-out PATH]

Hypotheses come either from fairseq-generate's stdout, whose sample id ``i`` is the
``i``-th evaluation item (``eval_item_ids`` of ``--manifest``, or else the order of
the reference file's ``images``; the two agree for our data), or from a COCO
results file.  The order is checked against fairseq-generate's ``T-`` lines (each
item's first reference): references in another order are refused, never mis-scored;
without ``T-`` lines ``--manifest`` is required.  Prints one table row with every score x100 (1 decimal, as papers
print them; Vocab is a word count); ``--json-out`` writes the raw values.
``score_files`` is the same as a Python function.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Iterable, List, Optional

from ..data.manifest import eval_item_ids, read_manifest
from ..errors import DataError
from ..data.text import read_dictionary
from ..evaluation.coco_metrics import METRICS, coco_scores, scoring_steps
from ..evaluation.diversity import diversity
from ..evaluation.references import (check_sample_order, load_coco_refs, load_coco_results, map_sample_ids,
                                     parse_generate_output, parse_generate_targets)
from ..files import check_output, write_json
from ..progress import progress_bar
from .common import add_overwrite_arg, parser, run_main

COMMAND = "nar-caption-score"

# Table columns: (result key, header); scores are printed x100 except the word count.
_COLUMNS = [
    ("Bleu_1", "B@1"), ("Bleu_2", "B@2"), ("Bleu_3", "B@3"), ("Bleu_4", "B@4"),
    ("METEOR", "M"), ("ROUGE_L", "R"), ("CIDEr-D", "C"), ("SPICE", "S"),
    ("Novel", "Novel"), ("Unique", "Unique"), ("Vocab_words", "Vocab"), ("Vocab_usage", "Voc-u"),
    ("Dist-2", "D@2"), ("Dist-3", "D@3"), ("Repeat", "Rep"), ("Unk", "Unk"),
]
_COUNTS = {"Vocab_words"}


def dict_vocab_size(path: str) -> int:
    """Number of words in a fairseq ``dict.txt`` ("<word> <count> [flags]" lines).

    fairseq adds its special symbols on loading (they are not in the file); the
    ``madeupwordNNNN`` entries that ``fairseq-preprocess`` pads the dictionary
    with are not words and are not counted.
    """
    words = sum(not w.startswith("madeupword") for w, _ in read_dictionary(path))
    if not words:
        raise DataError(f"{path}: dictionary has no words")
    return words


def score_files(
    refs: str,
    generate_output: Optional[str] = None,
    results: Optional[str] = None,
    manifest: Optional[str] = None,
    train_manifest: Optional[str] = None,
    dict_path: Optional[str] = None,
    spice: str = "auto",
    metrics: Iterable[str] = METRICS,
    name: Optional[str] = None,
    progress=None,
) -> Dict[str, object]:
    """Score one set of generated captions; the arguments mirror the CLI options
    (``progress``: passed to ``coco_scores``).

    Returns ``{"name", "num_images", "scores", "skipped"}``: ``scores`` maps each
    computed metric to its raw value (COCO metrics from ``coco_scores``, diversity
    from ``diversity``: fractions, ``Vocab_words`` a count) and ``skipped`` maps
    each metric that was not computed to the reason.
    """
    if (generate_output is None) == (results is None):
        raise ValueError("give exactly one of generate_output (fairseq-generate stdout) or results (COCO results)")
    if manifest and results:
        raise ValueError("manifest maps fairseq-generate sample ids: it applies to generate_output, not results")
    references = load_coco_refs(refs)
    if generate_output is not None:
        item_ids = eval_item_ids(manifest) if manifest else list(references)
        missing = [i for i in item_ids if i not in references]
        if missing:
            raise DataError(f"{refs}: lacks the references of {len(missing)} item(s) of {manifest}, e.g. "
                            f"{missing[:5]}: give the decoded split's references file")
        samples = parse_generate_output(generate_output)
        targets = parse_generate_targets(generate_output)
        if not targets and not manifest:
            raise DataError(f"{generate_output}: no 'T-<id>' target lines to check that the order of {refs}'s "
                            f"images is the decoded split's: pass --manifest <split>.tsv")
        check_sample_order(targets, item_ids, references, generate_output,
                           manifest if manifest else f"{refs}'s images")
        hyps = map_sample_ids(samples, item_ids, source=generate_output)
    else:
        hyps = load_coco_results(results)

    coco = coco_scores(references, hyps, spice=spice, metrics=metrics, progress=progress)
    skipped = coco.pop("skipped")
    train_captions = [row.caption for row in read_manifest(train_manifest)] if train_manifest else None
    div = diversity(hyps, train_captions, dict_vocab_size(dict_path) if dict_path else None)
    if div["Novel"] is None:
        skipped["Novel"] = "no training captions given (--train-manifest)"
    if div["Vocab_usage"] is None:
        skipped["Vocab_usage"] = "no vocabulary given (--dict)"

    return {
        "name": name or os.path.basename(generate_output or results),
        "num_images": len(hyps),
        "scores": {**coco, **{k: v for k, v in div.items() if v is not None}},
        "skipped": skipped,
    }


def _cell(scores, key) -> str:
    if key not in scores:
        return "-"
    return str(scores[key]) if key in _COUNTS else f"{100 * scores[key]:.1f}"


def markdown_table(results: List[Dict[str, object]]) -> str:
    """Several results (``score_files`` outputs) as one markdown table, x100."""
    cols = [(key, head) for key, head in _COLUMNS if any(key in r["scores"] for r in results)]
    lines = ["| name | images | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in results:
        cells = [_cell(r["scores"], k) for k, _ in cols]
        lines.append(f"| {r['name']} | {r['num_images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(result: Dict[str, object]) -> str:
    """The result as a small text table: scores x100 with one decimal, columns aligned."""
    scores = result["scores"]
    cols = [(key, head) for key, head in _COLUMNS if key in scores]
    cells = [_cell(scores, k) for k, _ in cols]
    widths = [max(len(h), len(c)) for (_, h), c in zip(cols, cells)]
    name_w = max(len("name"), len(result["name"]))
    lines = [
        f"{'name':<{name_w}}  {'images':>6}  " + "  ".join(f"{h:>{w}}" for (_, h), w in zip(cols, widths)),
        f"{result['name']:<{name_w}}  {result['num_images']:>6}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths)),
    ]
    lines += [f"skipped {k}: {why}" for k, why in result["skipped"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__.split("\n\n")[0], COMMAND)
    p.add_argument("--refs", required=True, help="COCO caption file with the references (images + annotations)")
    hyp = p.add_mutually_exclusive_group(required=True)
    hyp.add_argument("--generate-output", help="fairseq-generate stdout (H-<sample id> lines)")
    hyp.add_argument("--results", help="COCO results file: [{image_id, caption}, ...]")
    p.add_argument("--manifest", help="the split's manifest: sample id i -> eval_item_ids(manifest)[i] "
                                      "(default: the order of --refs' images)")
    p.add_argument("--train-manifest", help="training manifest, enables Novel")
    p.add_argument("--dict", dest="dict_path", help="fairseq dict.txt, enables Vocab usage %%")
    p.add_argument("--spice", choices=("auto", "off", "on"), default="auto",
                   help="auto: run SPICE when its CoreNLP 3.6.0 jars are installed (default)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                   help="COCO metrics to compute (default: all; leave out METEOR to skip its ~15 s JVM start)")
    p.add_argument("--name", help="row label (default: the hypothesis file's name)")
    p.add_argument("--json-out", help="write the raw result as JSON here")
    add_overwrite_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    p = build_parser()
    args = p.parse_args(argv)
    if args.manifest and args.results:
        p.error("--manifest maps fairseq-generate sample ids: it needs --generate-output, not --results")
    if args.json_out:
        check_output(args.json_out, COMMAND, overwrite=args.overwrite,
                     inputs=[args.refs, args.generate_output, args.results, args.manifest, args.train_manifest,
                             args.dict_path])
    steps = scoring_steps(args.metrics, args.spice)
    with progress_bar(len(steps), "score", "step", enabled=False if args.no_progress else None) as bar:
        def step(name):
            bar.set_postfix_str(name)
            bar.update(1)

        result = score_files(
            args.refs, generate_output=args.generate_output, results=args.results, manifest=args.manifest,
            train_manifest=args.train_manifest, dict_path=args.dict_path, spice=args.spice,
            metrics=args.metrics, name=args.name, progress=step,
        )
    print(format_table(result))
    if args.json_out:
        write_json(args.json_out, result, made_by=COMMAND)
    return result


def cli_main(argv: Optional[List[str]] = None) -> None:
    """Console entry: exit 0; a known error (DataError, MetricUnavailable) is one line and exit 1."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
