"""Benchmark generator configurations in one run: quality, batch-1 latency, throughput,
decoder passes, cost in bare forward passes, a speed–quality (Pareto) chart.

    nar-caption-benchmark DATA --subset test --threads 1 \\
        --row "AR beam 5=--path ar.pt --beam 5 --max-len-b 30" \\
        --row "AR greedy=--path ar.pt --beam 1 --max-len-b 30" \\
        --row "NARVL CTC=--path narvl.pt --generator ctc" \\
        --out-json bench.json --out-md bench.md --out-png bench.png

Each ``--row NAME=ARGS`` holds fairseq-generate arguments (any ``--task``/``--generator``
of the package).  The rows are interleaved item by item (``evaluation/latency.py``), so
drift on a shared machine hits every row alike; latency is the median with its
inter-quartile range over items × ``--passes``.  Quality comes from the same scorer for
every row (BLEU-4, METEOR, CIDEr-D on the batch-1 captions) plus the rate of captions with
an immediately repeated word and of captions with <unk> (the vocabulary rule:
``generators.base.banned_symbols``, the same for every row).  ``--ar-rows A,B,...`` names the
autoregressive rows: the best of them by the main score (CIDEr-D) on this run is the reference
every quality percentage is of ("% of best AR"), and, unless ``--baseline`` names another row,
the row the speed-ups (batch 1) and throughput ratios (``--throughput-batch``) are relative to
(default without either: the first row).  ``--compare NAME`` (repeatable) adds the speed-up and
throughput ratio against a further row, e.g. a shallow-decoder AR model.  ``--length-sweep 8,16,32`` also times every row
with its caption length forced to that many tokens (each generator says how, where it registers:
e.g. AR / outline-fill ``--min-len`` = ``--max-len-b``, NACF ``--nar-min-length`` =
``--nar-max-length``; generators that decode a fixed number of positions whatever the length,
such as CTC and diffusion, are reported as such).
``--device cuda`` (optionally ``--fp16``) times on a GPU (synchronised clock).
Writes JSON (every number, the environment and the chart's points), markdown and a PNG.
"""
import argparse
import datetime
import os
import platform
import re
import shlex
import statistics
import sys

import torch

from .. import inference
from ..evaluation.chart import chart_points, draw_pareto, plt
from ..evaluation.coco_metrics import METRICS, coco_scores
from ..evaluation.diversity import repeat_rate, unk_rate
from ..evaluation.latency import interleaved_latency, interleaved_throughput, markdown_table, summarize
from ..errors import GeneratorError
from ..generators import spec_of
from ..files import atomic_path, atomic_write_text, check_output, write_json
from .common import (add_device_arg, add_overwrite_arg, int_list, name_list, nonneg_int, parser, positive_int,
                     run_main, split_name)

COMMAND = "nar-caption-benchmark"

def parse_row(spec: str):
    """``NAME=ARGS``; NAME may itself hold '=' ("CT-MP T=2 B=6"): the split is at the
    first '=' followed by an option (ARGS start with '-')."""
    m = re.match(r"^(.*?)=(?=\s*-)(.*)$", spec)
    if not m or not m.group(1).strip():
        raise argparse.ArgumentTypeError(f"--row must be NAME=ARGS with ARGS starting with an option, got {spec!r}")
    return m.group(1).strip(), shlex.split(m.group(2))


def forced_length_args(generator: str, tokens: int):
    """Arguments that force a caption of ``tokens`` tokens (words + </s>), or None when the
    generator's cost does not depend on the caption length (its registration says which)."""
    force = spec_of(generator).forced_length
    return None if force is None else force(tokens - 1)


def machine_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else platform.processor() or platform.machine()
    except OSError:
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores"


def _load_rows(data, subset, rows, device, fp16):
    loaded, datasets = [], []
    for name, args in rows:
        if device == "cpu" and "--cpu" not in args:
            args = args + ["--cpu"]
        ld = inference.load(data, args, device=device, fp16=fp16)
        ld.task.load_dataset(subset)
        loaded.append(ld)
        datasets.append(ld.task.dataset(subset))
    return loaded, datasets


def row_scores(loaded, ds, captions, metrics):
    """The scores of one row's captions (item id → caption) on its dataset: the task's own scorer where it
    has one, else the COCO metrics against the dataset's references."""
    if hasattr(loaded.task, "benchmark_scores"):  # the task scores its own outputs (vision_language)
        return loaded.task.benchmark_scores(ds, captions, metrics=list(metrics))
    return coco_scores({i: ds.refs[i] for i in captions}, captions, spice="off", metrics=list(metrics))


def main_score(scores: dict) -> str:
    """The score a row is ranked by: CIDEr-D for captions, else the task's first metric."""
    return "CIDEr-D" if "CIDEr-D" in scores else next(k for k, v in scores.items() if isinstance(v, float))


def relate(results, baseline=None, ar_rows=(), compare=()):
    """Fill each row's comparisons (in place) and return the names (speed baseline, best AR row
    or None).  The best AR row is the highest main score among ``ar_rows`` (the first on a tie);
    per row: ``quality_pct`` (its main score as % of the best AR row's), ``speedup`` (batch-1
    latency ratio) and ``throughput_ratio`` against the speed baseline (``baseline``, else the
    best AR row, else the first row), and ``vs[NAME]`` with both ratios for every ``compare`` row."""
    by = {r["name"]: r for r in results}
    best = None
    if ar_rows:
        key = main_score(results[0]["scores"])
        best = max(ar_rows, key=lambda n: by[n]["scores"][key])  # max keeps the first of equal rows
    base = baseline or best or results[0]["name"]

    def ratios(r, ref):
        thr = r["throughput"] / ref["throughput"] if r.get("throughput") and ref.get("throughput") else None
        return ref["latency"]["median_ms"] / r["latency"]["median_ms"], thr

    for r in results:
        r["speedup"], r["throughput_ratio"] = ratios(r, by[base])
        r["vs"] = {n: dict(zip(("speedup", "throughput_ratio"), ratios(r, by[n]))) for n in compare}
        if best:
            key = main_score(r["scores"])
            r["quality_pct"] = 100 * r["scores"][key] / by[best]["scores"][key] if by[best]["scores"][key] else None
    return base, best


def benchmark(data, subset, rows, device="cpu", warmup=5, max_items=None, throughput_batch=64,
              metrics=("Bleu", "METEOR", "CIDEr-D"), passes=1, baseline=None, length_sweep=(), sweep_items=30,
              fp16=False, log=print, ar_rows=(), compare=()):
    """Returns (rows, sweep); every row carries its comparisons (``relate``: the names of the speed
    baseline and of the best AR row are in ``rows[0]["reference"]``)."""
    names = [n for n, _ in rows]
    if len(set(names)) != len(names):
        raise GeneratorError(f"row names must be unique, got {names}")
    unknown = [n for n in (*ar_rows, *compare, *([baseline] if baseline else [])) if n not in names]
    if unknown:
        raise GeneratorError(f"not row names: {', '.join(unknown)} (rows: {', '.join(names)})")
    log(f"[benchmark] loading {len(rows)} rows")
    loaded, datasets = _load_rows(data, subset, rows, device, fp16)

    def progress(p, i, n):
        if (i + 1) % max(1, n // 5) == 0 or i + 1 == n:
            log(f"[benchmark] latency pass {p + 1}/{passes}: {i + 1}/{n} items x {len(rows)} rows")

    lat = interleaved_latency(loaded, datasets, passes, warmup, max_items, progress=progress)
    thr = interleaved_throughput(loaded, datasets, throughput_batch, max_items) if throughput_batch else None
    results = []
    for k, ((name, args), ld, ds, res) in enumerate(zip(rows, loaded, datasets, lat)):
        caps = res["captions"]
        scores = row_scores(ld, ds, caps, metrics)
        summary = summarize(res["times"])
        passes_per_item = statistics.fmean(res["passes"])
        enc, dec = statistics.median(res["enc"]) * 1000, statistics.median(res["dec"]) * 1000
        results.append({
            "name": name, "args": args, "generator": ld.task.cfg.generator, "n_items": len(caps),
            "scores": scores, "repeat_rate": repeat_rate(caps.values()), "unk_rate": unk_rate(caps.values()),
            "latency": summary, "throughput": thr[k] if thr else None, "throughput_batch": throughput_batch,
            "decoder_passes": passes_per_item, "bare_encoder_ms": enc, "bare_decoder_ms": dec,
            "x_bare": summary["median_ms"] / (enc + dec),
            "overhead": summary["median_ms"] / (enc + passes_per_item * dec),
        })
        quality = ", ".join(f"{k2} {100 * v:.1f}" for k2, v in scores.items()
                            if k2 in ("CIDEr-D", "vqa_accuracy", "accuracy", "acc@0.5"))
        log(f"[benchmark] {name}: {summary['median_ms']:.1f} ms/item (median), {quality}")
    base_name, best_name = relate(results, baseline, list(ar_rows), list(compare))
    for r in results:
        r["reference"] = {"speed": base_name, "best_ar": best_name, "compare": list(compare)}
    sweep = _length_sweep(data, subset, rows, results, length_sweep, sweep_items, device, fp16, log) \
        if length_sweep else None
    return results, sweep


def _length_sweep(data, subset, rows, results, lengths, n_items, device, fp16, log):
    """Median batch-1 latency per row at each forced caption length (tokens incl. </s>)."""
    combos, out = [], {r["name"]: {"generator": r["generator"], "ms": {}} for r in results}
    for (name, args), r in zip(rows, results):
        for L in lengths:
            extra = forced_length_args(r["generator"], L)
            if extra is None:
                out[name]["fixed_positions"] = True
                continue
            combos.append((name, L, args + extra))
    if combos:
        log(f"[benchmark] length sweep {list(lengths)}: {len(combos)} forced-length configurations")
        loaded, datasets = _load_rows(data, subset, [(f"{n} L={L}", a) for n, L, a in combos], device, fp16)
        keep = []
        for (name, L, _), ld, ds in zip(combos, loaded, datasets):
            try:  # a length the model cannot produce (e.g. beyond its positions) is reported, not timed
                inference.decode_batch(ld, inference.to_device(ds.collater([ds[0]]), ld.device, ld.fp16))
                keep.append(True)
            except (AssertionError, ValueError, IndexError) as e:
                out[name].setdefault("infeasible", {})[str(L)] = str(e).splitlines()[0][:120]
                keep.append(False)
        combos = [c for c, k in zip(combos, keep) if k]
        loaded = [x for x, k in zip(loaded, keep) if k]
        datasets = [x for x, k in zip(datasets, keep) if k]
        lat = interleaved_latency(loaded, datasets, 1, warmup=2, max_items=n_items + 2, bare=False) if combos else []
        for (name, L, _), res in zip(combos, lat):
            out[name]["ms"][str(L)] = summarize(res["times"])["median_ms"]
    for name, o in out.items():
        ms = o["ms"]
        if str(min(lengths)) in ms and str(max(lengths)) in ms:
            o["growth"] = ms[str(max(lengths))] / ms[str(min(lengths))]
    return {"lengths": list(lengths), "rows": out}


def sweep_table(sweep) -> str:
    lengths = sweep["lengths"]
    head = ["configuration", *(f"{L} tokens (ms)" for L in lengths), f"growth {min(lengths)}→{max(lengths)}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, o in sweep["rows"].items():
        if o.get("fixed_positions"):
            vals = ["fixed positions"] * len(lengths) + ["1.00 (cost independent of length)"]
        else:
            vals = [f"{o['ms'][str(L)]:.1f}" if str(L) in o["ms"] else "infeasible" for L in lengths]
            vals.append(f"{o['growth']:.2f}x" if "growth" in o else "-")
        lines.append("| " + " | ".join([name, *vals]) + " |")
    return "\n".join(lines)


def main(argv=None):
    """The command's work; returns (rows, sweep) for callers in Python."""
    p = parser(__doc__, COMMAND)
    p.add_argument("data")
    p.add_argument("--subset", default="test", type=split_name)
    p.add_argument("--row", action="append", type=parse_row, required=True, help="NAME=fairseq-generate args")
    p.add_argument("--baseline", help="row NAME the speed-ups are relative to (default: the best of --ar-rows, "
                                      "else the first row)")
    p.add_argument("--ar-rows", type=name_list, default=[],
                   help="comma-separated names of the autoregressive rows: the best of them by CIDEr-D is the "
                        "reference of every quality percentage (and the default --baseline)")
    p.add_argument("--compare", action="append", default=[],
                   help="row NAME to give every row's batch-1 speed-up and throughput ratio against as well "
                        "(repeatable; e.g. a shallow-decoder AR row)")
    add_device_arg(p)
    p.add_argument("--fp16", action="store_true", help="half precision (with --device cuda)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch.set_num_threads (CPU latency: pin it, e.g. 1)")
    p.add_argument("--warmup", type=nonneg_int, default=5, help="first items of the first pass decoded but not timed")
    p.add_argument("--passes", type=positive_int, default=1, help="timed passes over the items (rows interleaved)")
    p.add_argument("--max-items", type=positive_int, default=None, help="only the first N items of the split")
    p.add_argument("--throughput-batch", type=nonneg_int, default=64, help="0 = skip throughput")
    p.add_argument("--length-sweep", type=int_list(low=2), default=[],
                   help="comma-separated forced caption lengths in tokens (>= 2: a word and </s>), e.g. 8,16,32")
    p.add_argument("--sweep-items", type=positive_int, default=30, help="items per forced length")
    p.add_argument("--metrics", type=name_list, default=["Bleu", "METEOR", "CIDEr-D"],
                   help=f"comma-separated scorer metric groups ({', '.join(METRICS)})")
    p.add_argument("--title", default="", help="chart title")
    p.add_argument("--out-json")
    p.add_argument("--out-md")
    p.add_argument("--out-png")
    add_overwrite_arg(p)
    a = p.parse_args(argv)
    names = [n for n, _ in a.row]
    for option, given in (("--baseline", [a.baseline] if a.baseline else []), ("--ar-rows", a.ar_rows),
                          ("--compare", a.compare)):
        wrong = [n for n in given if n not in names]
        if wrong:
            p.error(f"{option}: not a row name: {', '.join(map(repr, wrong))}")
    unknown = [m for m in a.metrics if m not in METRICS]
    if unknown:
        p.error(f"argument --metrics: unknown metric group(s) {', '.join(unknown)} (choose from {', '.join(METRICS)})")
    if a.fp16 and a.device != "cuda":
        p.error("argument --fp16: half precision needs --device cuda")
    outputs = [o for o in (a.out_json, a.out_md, a.out_png) if o]
    if len(set(map(os.path.abspath, outputs))) != len(outputs):
        p.error("--out-json, --out-md and --out-png must be three different files")
    checkpoints = [x for _, args in a.row for k, x in enumerate(args) if k and args[k - 1] == "--path"]
    for out in outputs:
        check_output(out, COMMAND, inputs=checkpoints, overwrite=a.overwrite)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows, sweep = benchmark(a.data, a.subset, a.row, a.device, a.warmup, a.max_items, a.throughput_batch,
                            a.metrics, a.passes, a.baseline, a.length_sweep, a.sweep_items, a.fp16,
                            log=lambda m: print(m, file=sys.stderr, flush=True), ar_rows=a.ar_rows, compare=a.compare)
    today = datetime.date.today().isoformat()
    env = {"device": a.device, "fp16": a.fp16, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": machine_description(a.device), "date": today, "subset": a.subset,
           "passes": a.passes, "warmup": a.warmup, "baseline": rows[0]["reference"]["speed"],
           "best_ar": rows[0]["reference"]["best_ar"], "compare": a.compare, "throughput_batch": a.throughput_batch,
           "vocabulary_rule": "no row emits <s>, <pad>, <unk>, <mask>, <vis>, <blank> (generators.base.banned_symbols)"}
    caption_scores = "CIDEr-D" in rows[0]["scores"]
    table = markdown_table(rows)
    header = (f"{env['machine']}, {a.device}{' fp16' if a.fp16 else ''}, torch threads {env['threads']}, "
              f"{today}; split {a.subset}, {rows[0]['n_items']} items, {a.passes} interleaved pass(es), "
              f"warm-up {a.warmup}; speed-up and throughput ratio vs {env['baseline']}"
              + (f"; % of the best AR row, {env['best_ar']}" if env["best_ar"] else "")
              + (f"; throughput at batch {a.throughput_batch}" if a.throughput_batch else "")
              + f"; {env['vocabulary_rule']}")
    print(table)
    if sweep:
        print("\n" + sweep_table(sweep))
    points = chart_points(rows) if caption_scores else None
    if a.out_png:
        if points is None:
            raise GeneratorError("--out-png charts CIDEr-D: these rows have no caption scores")
        with atomic_path(a.out_png, made_by=COMMAND) as tmp:
            fig = draw_pareto(points, tmp, caption=f"{env['machine']} · {a.device} · threads {env['threads']} · {today}",
                              title=a.title, throughput_batch=a.throughput_batch or None)
            plt.close(fig)
    if a.out_json:
        write_json(a.out_json, {"environment": env, "rows": rows, "length_sweep": sweep, "chart": points},
                   made_by=COMMAND)
    if a.out_md:
        atomic_write_text(a.out_md, header + "\n\n" + table + "\n" + ("\n" + sweep_table(sweep) + "\n" if sweep else ""),
                          made_by=COMMAND)
    return rows, sweep


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, COMMAND)


if __name__ == "__main__":
    cli_main()
