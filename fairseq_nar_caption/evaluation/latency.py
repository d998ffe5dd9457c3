"""Latency, throughput and decoder passes of generator configurations, honestly measured.

Every configuration ("row") is loaded first; then the rows are **interleaved**: for each
pass and each item, every row decodes that item at batch 1, in an order rotated per item
(row r first at item r, …), so drift on a shared machine (another job, thermal state,
caches) hits every row alike.  Per row:

- latency: per item, the whole ``task.inference_step`` (encoder included, as docs/benchmark.md
  asks), not data loading; the first ``warmup`` items of the first pass are decoded but
  not timed; ``torch.cuda.synchronize()`` before reading the clock on GPU; summarised
  as the median and the inter-quartile range over items × passes;
- decoder passes per item: calls of the decoders' output projections (every decoder of
  the package ends in one: one call = one batched decoder pass), counted in the first
  pass, teacher passes included;
- bare forward: right after the row decodes an item, one encoder pass and one decoder pass
  of the same network (``model.bare_decoder_pass`` over the row's output length) are timed
  separately; ``x_bare`` = latency / (encoder + one decoder pass) is the row's cost in
  units of the physical floor of non-autoregressive decoding, and ``overhead`` = latency /
  (encoder + passes × decoder pass) what the generator costs beyond its passes;
- throughput: items/s decoding the split at a large batch, the batches interleaved over
  the rows the same way, after one untimed batch per row.

Speed-ups are ratios to the baseline row measured in the same run.
"""
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from .. import inference
from ..generators.base import extra_models


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotated(n: int, k: int) -> List[int]:
    """Row indices 0..n-1 starting at k mod n (the interleaving order at item k)."""
    return [(k + j) % n for j in range(n)]


class PassCounter:
    """Counts batched decoder passes: forward calls of every ``output_projection`` reachable
    from the row's models and generator (a NACF teacher, SAIC's beam-search wrapper …)."""

    def __init__(self, loaded: "inference.Loaded"):
        roots = list(loaded.models) + extra_models(loaded.generator)
        seen, self.handles, self.count = set(), [], 0
        for root in roots:
            for name, mod in root.named_modules():
                if name.split(".")[-1] == "output_projection" and id(mod) not in seen:
                    seen.add(id(mod))
                    self.handles.append(mod.register_forward_hook(self._hook))
        if not self.handles:
            raise ValueError(f"{type(loaded.models[0]).__name__}: no decoder output_projection to count passes on")

    def _hook(self, *unused):
        self.count += 1

    def close(self):
        for h in self.handles:
            h.remove()


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


@torch.no_grad()
def bare_forward(loaded: "inference.Loaded", sample: dict, length: int):
    """(seconds of one encoder pass, seconds of one decoder pass over ``length`` positions)."""
    model = loaded.models[0]
    enc, t_enc = _timed(lambda: model.forward_encoder(sample["net_input"]), loaded.device)
    _, t_dec = _timed(lambda: model.bare_decoder_pass(enc, length), loaded.device)
    return t_enc, t_dec


def interleaved_latency(rows: Sequence["inference.Loaded"], datasets: Sequence, passes: int = 1,
                        warmup: int = 5, max_items: Optional[int] = None, bare: bool = True,
                        progress=None) -> List[dict]:
    """Batch-1 decoding of the same items by every row, interleaved (module docstring).
    Returns per row: captions (item id → caption, first pass), per-item seconds, decoder
    passes per item, and the bare encoder / decoder seconds."""
    n_rows = len(rows)
    n_items = min(len(ds) for ds in datasets)
    if max_items:
        n_items = min(n_items, max_items)
    if n_items <= warmup:
        raise ValueError(f"no timed items: {n_items} items and --warmup {warmup}")
    out = [{"captions": {}, "times": [], "passes": [], "enc": [], "dec": []} for _ in rows]
    counters = [PassCounter(r) for r in rows]
    samples = [[None] * n_items for _ in rows]
    try:
        for p in range(passes):
            for i in range(n_items):
                for r in rotated(n_rows, i + p):
                    loaded, res = rows[r], out[r]
                    if samples[r][i] is None:
                        ds = datasets[r]
                        samples[r][i] = inference.to_device(ds.collater([ds[i]]), loaded.device, loaded.fp16)
                    sample = samples[r][i]
                    before = counters[r].count
                    caps, dt = _timed(lambda: inference.decode_batch(loaded, sample), loaded.device)
                    if p == 0:
                        res["captions"][sample["item_ids"][0]] = caps[0]
                        res["passes"].append(counters[r].count - before)
                    if p > 0 or i >= warmup:
                        res["times"].append(dt)
                        if bare:
                            t_enc, t_dec = bare_forward(loaded, sample, len(caps[0].split()) + 1)
                            res["enc"].append(t_enc)
                            res["dec"].append(t_dec)
                if progress is not None:
                    progress(p, i, n_items)
    finally:
        for c in counters:
            c.close()
    return out


def interleaved_throughput(rows: Sequence["inference.Loaded"], datasets: Sequence, batch_size: int,
                           max_items: Optional[int] = None) -> List[float]:
    """Items per second of every row at ``batch_size``, batches interleaved over the rows."""
    n_items = min(len(ds) for ds in datasets)
    if max_items:
        n_items = min(n_items, max_items)
    batches = [[inference.to_device(b, r.device, r.fp16) for b in inference.batches(ds, batch_size, n_items)]
               for r, ds in zip(rows, datasets)]
    for r, bs in zip(rows, batches):  # one untimed batch per row
        inference.decode_batch(r, bs[0])
    seconds = [0.0] * len(rows)
    for k in range(len(batches[0])):
        for r in rotated(len(rows), k):
            _, dt = _timed(lambda: inference.decode_batch(rows[r], batches[r][k]), rows[r].device)
            seconds[r] += dt
    return [n_items / s for s in seconds]


def summarize(times: List[float]) -> Dict[str, float]:
    """Median, quartiles, mean and p90 (ms) of per-item seconds."""
    ms = sorted(t * 1000 for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q[0],
        "q3_ms": q[2],
        "iqr_ms": q[2] - q[0],
        "mean_ms": statistics.fmean(ms),
        "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "timed_items": len(ms),
    }


def markdown_table(rows: List[dict]) -> str:
    """One line per configuration (``cli/benchmark.py`` fills the fields): the caption metrics
    (BLEU-4, METEOR, CIDEr-D), or a task's own metrics (VQA / grounding / entailment accuracy),
    then the comparisons ``cli.benchmark.relate`` made (% of the best AR row, speed-up and
    throughput ratio against the baseline and every compared row) and the cost columns."""
    scores = rows[0]["scores"]
    caption = "CIDEr-D" in scores
    metric_keys = ([k for k in ("Bleu_4", "METEOR", "CIDEr-D") if k in scores] if caption
                   else [k for k, v in scores.items() if isinstance(v, float)])
    ref = rows[0].get("reference") or {}
    best = ref.get("best_ar")
    compare = ref.get("compare") or []
    has_thr = any(r.get("throughput") for r in rows)

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    head = ["configuration", *metric_keys, *(["% of best AR"] if best else []), *(["repeat %"] if caption else []),
            "latency ms (median [IQR])", "speed-up", *(["throughput ratio"] if has_thr else [])]
    for n in compare:
        head += [f"speed-up vs {n}", *([f"throughput vs {n}"] if has_thr else [])]
    head += ["decoder passes / item", "x bare forward", *(["overhead"] if caption else []), "throughput items/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lat = r["latency"]
        vals = [r["name"], *(f"{100 * r['scores'][k]:.1f}" for k in metric_keys)]
        if best:
            vals.append(f"{r['quality_pct']:.0f} %" if r.get("quality_pct") is not None else "-")
        if caption:
            vals.append(f"{100 * r['repeat_rate']:.1f}")
        vals += [f"{lat['median_ms']:.1f} [{lat['q1_ms']:.1f}-{lat['q3_ms']:.1f}]", x(r["speedup"])]
        if has_thr:
            vals.append(x(r.get("throughput_ratio")))
        for n in compare:
            vs = r["vs"][n]
            vals += [x(vs["speedup"]), *([x(vs["throughput_ratio"])] if has_thr else [])]
        vals += [f"{r['decoder_passes']:.1f}", f"{r['x_bare']:.2f}" if r.get("x_bare") else "-",
                 *([f"{r['overhead']:.2f}" if r.get("overhead") else "-"] if caption else []),
                 f"{r['throughput']:.1f}" if r.get("throughput") else "-"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)
