"""Benchmark generator configurations: batch-1 latency, throughput, quality.

    nar-caption-benchmark DATA --subset test \\
        --row "AR beam 5=--path ckpt/checkpoint_best.pt --beam 5 --max-len-b 30" \\
        --row "AR greedy=--path ckpt/checkpoint_best.pt --beam 1 --max-len-b 30" \\
        --out-json bench.json --out-md bench.md

Each ``--row NAME=ARGS`` holds fairseq-generate arguments (so any
``--generator`` of the captioning task can be benchmarked the same way).  The
first row is the baseline the speed-ups are relative to.  ``--device cuda`` runs
on GPU (synchronised timing).  Writes JSON (all numbers + environment) and a
markdown table.
"""
import argparse
import json
import os
import platform
import re
import shlex

import torch

from .. import inference
from ..evaluation.coco_metrics import coco_scores
from ..evaluation.latency import markdown_table, measure_latency, measure_throughput, summarize


def parse_row(spec: str):
    """``NAME=ARGS``; NAME may itself hold '=' ("CT-MP T=2 B=6"): the split is at the
    first '=' followed by an option (ARGS start with '-')."""
    m = re.match(r"^(.*?)=(?=\s*-)(.*)$", spec)
    if not m or not m.group(1).strip():
        raise argparse.ArgumentTypeError(f"--row must be NAME=ARGS with ARGS starting with an option, got {spec!r}")
    return m.group(1).strip(), shlex.split(m.group(2))


def benchmark(data, subset, rows, device="cpu", warmup=5, max_items=None, throughput_batch=64,
              metrics=("Bleu", "CIDEr-D")):
    results = []
    for name, args in rows:
        if device == "cpu" and "--cpu" not in args:
            args = args + ["--cpu"]
        loaded = inference.load(data, args, device=device)
        loaded.task.load_dataset(subset)
        ds = loaded.task.dataset(subset)
        captions, times = measure_latency(loaded, ds, warmup=warmup, max_items=max_items)
        if hasattr(loaded.task, "benchmark_scores"):  # the task scores its own outputs (vision_language)
            scores = loaded.task.benchmark_scores(ds, captions, metrics=list(metrics))
        else:
            refs = {i: ds.refs[i] for i in captions}
            scores = coco_scores(refs, captions, spice="off", metrics=list(metrics))
        thr = measure_throughput(loaded, ds, throughput_batch, max_items) if throughput_batch else None
        results.append({"name": name, "args": args, "latency": summarize(times), "throughput": thr,
                        "throughput_batch": throughput_batch, "scores": scores, "n_items": len(captions)})
        quality = ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()
                            if k in ("CIDEr-D", "vqa_accuracy", "accuracy", "acc@0.5")) or "CIDEr-D nan"
        print(f"[benchmark] {name}: {results[-1]['latency']['mean_ms']:.1f} ms/item, {quality}", flush=True)
    base = results[0]["latency"]["mean_ms"]
    for r in results:
        r["speedup"] = base / r["latency"]["mean_ms"]
    return results


def task_metric_table(rows) -> str:
    """``markdown_table`` for tasks scored by their own metrics (VQA/grounding/entailment accuracy)."""
    keys = [k for k in rows[0]["scores"] if isinstance(rows[0]["scores"][k], float)]
    head = ["configuration", *keys, "latency ms (mean)", "median", "speed-up", "throughput items/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["name"], *(f"{100 * r['scores'][k]:.1f}" for k in keys), f"{r['latency']['mean_ms']:.1f}",
                f"{r['latency']['median_ms']:.1f}", f"{r['speedup']:.2f}x",
                f"{r['throughput']:.1f}" if r["throughput"] else "-"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None):
    """The command's work; returns its result for callers in Python."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--subset", default="test")
    p.add_argument("--row", action="append", type=parse_row, required=True, help="NAME=fairseq-generate args")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=5, help="first items decoded but not timed")
    p.add_argument("--max-items", type=int, default=None, help="only the first N items of the split")
    p.add_argument("--throughput-batch", type=int, default=64, help="0 = skip throughput")
    p.add_argument("--metrics", default="Bleu,METEOR,CIDEr-D", help="scorer metric groups")
    p.add_argument("--out-json")
    p.add_argument("--out-md")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = benchmark(a.data, a.subset, a.row, a.device, a.warmup, a.max_items, a.throughput_batch,
                     a.metrics.split(","))
    env = {"device": a.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "subset": a.subset,
           "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None}
    table = markdown_table(rows) if any(k in rows[0]["scores"] for k in ("Bleu_4", "METEOR", "CIDEr-D")) \
        else task_metric_table(rows)
    print(table)
    if a.out_json:
        os.makedirs(os.path.dirname(os.path.abspath(a.out_json)), exist_ok=True)
        with open(a.out_json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(f"Device: {a.device}, torch threads {env['threads']}, split {a.subset}, "
                    f"warm-up {a.warmup}, throughput batch {a.throughput_batch}\n\n{table}\n")
    return rows



def cli_main(argv=None) -> None:
    """Console entry: returns None, so the console wrapper's sys.exit() sees success as 0."""
    main(argv)


if __name__ == "__main__":
    cli_main()
