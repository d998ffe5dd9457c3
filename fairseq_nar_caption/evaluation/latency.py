"""Latency and throughput of a generator configuration, honestly measured.

- Latency: batch 1 over the eval split, in dataset order; the clock covers the
  whole ``task.inference_step`` (encoder included, as DESIGN.md asks), not data
  loading; the first ``warmup`` items are decoded but not timed;
  ``torch.cuda.synchronize()`` before reading the clock on GPU.
- Throughput: items/s decoding the split at a large batch, after one untimed batch.
- Quality: the batch-1 captions are scored with the package scorer, so one row
  of the table is one point of the speed–quality chart.
Speed-ups are ratios to the first row measured in the same run (the AR baseline).
"""
import statistics
import time
from typing import Dict, List, Optional

import torch

from .. import inference


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(loaded: "inference.Loaded", dataset, warmup: int = 5,
                    max_items: Optional[int] = None):
    """Returns (captions by item id, per-item seconds of the timed items)."""
    captions, times = {}, []
    for i, sample in enumerate(inference.batches(dataset, 1, max_items)):
        sample = inference.to_device(sample, loaded.device)
        _sync(loaded.device)
        t0 = time.perf_counter()
        caps = inference.decode_batch(loaded, sample)
        _sync(loaded.device)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        captions[sample["item_ids"][0]] = caps[0]
    if not times:
        raise ValueError(f"no timed items: the split has {len(captions)} items and --warmup is {warmup}")
    return captions, times


def measure_throughput(loaded: "inference.Loaded", dataset, batch_size: int,
                       max_items: Optional[int] = None) -> float:
    """Items per second at ``batch_size`` (one untimed warm-up batch first)."""
    batches = [inference.to_device(b, loaded.device) for b in inference.batches(dataset, batch_size, max_items)]
    inference.decode_batch(loaded, batches[0])
    _sync(loaded.device)
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        inference.decode_batch(loaded, b)
        n += b["nsentences"]
    _sync(loaded.device)
    return n / (time.perf_counter() - t0)


def summarize(times: List[float]) -> Dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "mean_ms": statistics.fmean(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "timed_items": len(ms),
    }


def markdown_table(rows: List[dict]) -> str:
    """One line per configuration; speed-up = first row's mean latency / this row's."""
    metric_keys = [k for k in ("Bleu_4", "METEOR", "CIDEr-D") if k in rows[0]["scores"]]
    head = ["configuration", *metric_keys, "latency ms (mean)", "median", "speed-up", "throughput items/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["name"], *(f"{100 * r['scores'][k]:.1f}" for k in metric_keys),
                f"{r['latency']['mean_ms']:.1f}", f"{r['latency']['median_ms']:.1f}",
                f"{r['speedup']:.2f}x", f"{r['throughput']:.1f}" if r["throughput"] else "-"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)
