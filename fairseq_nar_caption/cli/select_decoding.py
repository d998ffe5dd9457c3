"""Choose decoding settings on a validation split: decode it with every candidate, keep the best.

    nar-caption-select-decoding DATA --subset val --common "--path ar.pt --max-len-b 30" \\
        --candidate "greedy=--beam 1" --candidate "beam 5=--beam 5" \\
        --candidate "beam 5 lenpen 1.4=--beam 5 --lenpen 1.4" --out-json val_decoding.json

Each candidate's fairseq-generate arguments are added to ``--common``; every candidate decodes the
whole split (``--batch-size`` items at a time) and is scored by the benchmark's scorer (CIDEr-D by
default; a task with its own scorer, e.g. VQA accuracy, is ranked by its first metric).  The best
candidate (the first on a tie, so list the cheaper ones first) is printed last and written with
every score to ``--out-json`` ({"best": {"name", "args", "score"}, "candidates": [...]}), so a test
split stays untouched by the choice.
"""
import shlex
import sys

from .. import inference
from ..files import check_output, write_json
from .benchmark import main_score, parse_row, row_scores
from .common import add_device_arg, add_overwrite_arg, name_list, parser, positive_int, run_main, split_name

COMMAND = "nar-caption-select-decoding"


def select(data, subset, common, candidates, batch_size=50, device="cpu", metrics=("CIDEr-D",), log=print):
    """[(name, args)] → (best, every candidate) as dicts {"name", "args", "score", "metric"}; score x100."""
    out = []
    for k, (name, args) in enumerate(candidates):
        ld = inference.load(data, [*common, *args, *(["--cpu"] if device == "cpu" else [])], device=device)
        ld.task.load_dataset(subset)
        ds = ld.task.dataset(subset)
        caps = inference.decode_dataset(ld, ds, batch_size=batch_size)
        scores = row_scores(ld, ds, caps, list(metrics))
        key = main_score(scores)
        out.append({"name": name, "args": list(args), "metric": key, "score": 100 * scores[key]})
        log(f"[select] {k + 1}/{len(candidates)} {name}: {key} {100 * scores[key]:.2f} ({len(caps)} items)")
    best = max(out, key=lambda c: c["score"])  # max keeps the first of equal candidates
    return best, out


def main(argv=None):
    """The command's work; returns (best, candidates) for callers in Python."""
    p = parser(__doc__, COMMAND)
    p.add_argument("data")
    p.add_argument("--subset", default="val", type=split_name, help="the split the choice is made on")
    p.add_argument("--common", default="", help="fairseq-generate arguments of every candidate (--path ...)")
    p.add_argument("--candidate", action="append", type=parse_row, required=True,
                   help="NAME=fairseq-generate args (repeatable; the first on a tie wins)")
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--metrics", type=name_list, default=["CIDEr-D"], help="scorer metric groups (captions)")
    add_device_arg(p)
    p.add_argument("--out-json")
    add_overwrite_arg(p)
    a = p.parse_args(argv)
    names = [n for n, _ in a.candidate]
    if len(set(names)) != len(names):
        p.error(f"--candidate names must be unique, got {names}")
    if a.subset == "test":
        p.error("--subset test: decoding is chosen on a validation split, never on the test split")
    common = shlex.split(a.common)
    if a.out_json:
        paths = [x for k, x in enumerate(common) if k and common[k - 1] == "--path"]
        check_output(a.out_json, COMMAND, inputs=paths, overwrite=a.overwrite)
    best, every = select(a.data, a.subset, common, a.candidate, a.batch_size, a.device, a.metrics,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"| candidate | {best['metric']} on {a.subset} |\n|---|---|")
    for c in every:
        print(f"| {c['name']}{' (best)' if c is best else ''} | {c['score']:.2f} |")
    print(f"best: {best['name']}: {shlex.join(best['args'])}")
    if a.out_json:
        write_json(a.out_json, {"subset": a.subset, "common": common, "best": best, "candidates": every},
                   made_by=COMMAND)
    return best, every


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
