#!/usr/bin/env python
"""SAIC, Section 3 ("Is iterative refinement all you need?"): how well does ONE
non-autoregressive pass refill an AR caption from which words were masked?

    python scripts/saic_section3.py DATA --ar-path runs/ar/checkpoint_best.pt \\
        --saic-path runs/saic/checkpoint_best.pt [--split test] [--rates 0.1,0.3,0.5,0.7] \\
        [--seeds 4] [--beam 5] [--out-json s3.json] [--out-md s3.md] [-- more fairseq-generate args]

1. The AR model decodes every item of the split (beam ``--beam``, 5 as in the paper).
2. Each hypothesis of N words is masked (Section 3.2) with N_mask = max(1, ⌊N·p_mask⌋):
   - Head / Tail: the first / last N_mask words;
   - Random: N_mask random positions; averaged over ``--seeds`` seeds (the paper: 4);
   - Group: groups of k words, the first of each kept, the other k−1 masked, with
     k = max(2, round(1/(1 − p_mask))), so the actual rate is 1 − 1/k (Eq. 5); the
     report gives the actual rate of every row.
3. The SAIC model's Filler (its decoder without a mask) sees the N words + </s> with
   <mask> at the masked positions, in one pass, and every <mask> becomes its most
   probable word (never </s> or a reserved symbol: the length is fixed).
4. BLEU and CIDEr-D of the refilled captions against the references
   (``coco_scores(..., spice="off")``), per strategy and rate, next to the AR
   hypotheses themselves.

Writes JSON (every number and the settings) and a markdown table (CIDEr-D, BLEU-4).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils

from fairseq_nar_caption import inference
from fairseq_nar_caption.evaluation.coco_metrics import coco_scores
from fairseq_nar_caption.files import atomic_write_text

STRATEGIES = ("head", "tail", "random", "group")


def group_size_for(p_mask: float) -> int:
    """k with 1 − 1/k (Eq. 5) closest to p_mask, at least 2."""
    if not 0 < p_mask < 1:
        raise ValueError(f"masking rate must be in (0, 1), got {p_mask}")
    return max(2, round(1 / (1 - p_mask)))


def mask_positions(strategy: str, n: int, p_mask: float, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Sorted positions (0-based) to mask in a caption of ``n`` words."""
    n_mask = min(n, max(1, math.floor(n * p_mask + 1e-9)))
    if strategy == "head":
        return np.arange(n_mask)
    if strategy == "tail":
        return np.arange(n - n_mask, n)
    if strategy == "random":
        return np.sort(rng.choice(n, n_mask, replace=False))
    if strategy == "group":
        k = group_size_for(p_mask)
        return np.array([i for i in range(n) if i % k])
    raise ValueError(f"unknown masking strategy {strategy!r}; one of {STRATEGIES}")


@torch.no_grad()
def refill(model, task, sample, captions: List[List[int]], masked: List[np.ndarray]) -> List[str]:
    """One Filler pass over the captions (word ids) with <mask> at ``masked``."""
    d = task.target_dictionary
    mask, pad, eos = d.index("<mask>"), d.pad(), d.eos()
    tokens = torch.full((len(captions), max(len(c) for c in captions) + 1), pad, dtype=torch.long)
    slots = torch.zeros(tokens.shape, dtype=torch.bool)
    for i, (c, m) in enumerate(zip(captions, masked)):
        tokens[i, : len(c) + 1] = torch.tensor(c + [eos])
        slots[i, torch.as_tensor(m, dtype=torch.long)] = True
    encoder_out = model.forward_encoder(sample["net_input"])
    lprobs = F.log_softmax(model.forward_filler(tokens.masked_fill(slots, mask), encoder_out).float(), dim=-1)
    lprobs[..., [d.bos(), pad, eos, d.unk(), mask, d.index("<vis>"), d.index("<blank>")]] = -math.inf
    tokens = torch.where(slots, lprobs.argmax(-1), tokens)
    return [d.string(t[: len(c)]) for t, c in zip(tokens, captions)]


def run(data: str, ar_path: str, saic_path: str, split: str = "test", rates: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
        seeds: int = 4, beam: int = 5, batch_size: int = 64, generate_args: Sequence[str] = (),
        metrics: Sequence[str] = ("Bleu", "CIDEr-D")) -> dict:
    loaded = inference.load(data, ["--path", ar_path, "--beam", str(beam), "--max-len-b", "30", "--cpu",
                                   *generate_args])
    task = loaded.task
    task.load_dataset(split)
    ds = task.dataset(split)
    hyps = inference.decode_dataset(loaded, ds, batch_size)
    refs = {i: ds.refs[i] for i in hyps}

    def score(captions: Dict[str, str]) -> Dict[str, float]:
        return {m: v for m, v in coco_scores(refs, captions, spice="off", metrics=list(metrics)).items()
                if m != "skipped"}

    models, _ = checkpoint_utils.load_model_ensemble([saic_path], task=task)
    saic = models[0].eval()
    if not hasattr(saic, "forward_filler"):
        raise ValueError(f"{saic_path}: not a SAIC checkpoint (--arch saic)")
    d = task.target_dictionary
    item_ids = list(hyps)
    captions = [[d.index(w) for w in hyps[i].split()] for i in item_ids]

    def refilled(strategy, p, seed):
        rng = np.random.default_rng(seed)
        masks = [mask_positions(strategy, len(c), p, rng) for c in captions]
        out = {}
        for start, sample in zip(range(0, len(ds), batch_size), inference.batches(ds, batch_size)):
            idx = range(start, start + len(sample["item_ids"]))
            for item, cap in zip(sample["item_ids"], refill(saic, task, sample, [captions[j] for j in idx],
                                                            [masks[j] for j in idx])):
                out[item] = cap
        rate = sum(len(m) for m in masks) / sum(len(c) for c in captions)
        return score(out), rate

    results = []
    for strategy in STRATEGIES:
        for p in rates:
            runs = [refilled(strategy, p, s) for s in (range(seeds) if strategy == "random" else [0])]
            scores = {m: float(np.mean([r[0][m] for r in runs])) for m in runs[0][0]}
            results.append({"strategy": strategy, "p_mask": p, "actual_mask_rate": float(np.mean([r[1] for r in runs])),
                            "group_size": group_size_for(p) if strategy == "group" else None,
                            "seeds": len(runs), "scores": scores})
            print(f"[section3] {strategy} p={p}: CIDEr-D {100 * scores.get('CIDEr-D', float('nan')):.1f}", flush=True)
    return {"data": data, "split": split, "ar_path": ar_path, "saic_path": saic_path, "beam": beam,
            "n_items": len(item_ids), "ar_scores": score(hyps),
            "results": results}


def markdown(report: dict) -> str:
    ar = report["ar_scores"]
    lines = [f"AR hypotheses (beam {report['beam']}, {report['n_items']} items of {report['split']}): "
             f"CIDEr-D {100 * ar['CIDEr-D']:.1f}, BLEU-4 {100 * ar['Bleu_4']:.1f}", "",
             "| strategy | p_mask | actual rate | CIDEr-D | BLEU-4 |", "| --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        name = r["strategy"] + (f" (k={r['group_size']})" if r["group_size"] else "")
        name += f", {r['seeds']} seeds" if r["seeds"] > 1 else ""
        lines.append(f"| {name} | {r['p_mask']} | {r['actual_mask_rate']:.2f} | {100 * r['scores']['CIDEr-D']:.1f} "
                     f"| {100 * r['scores']['Bleu_4']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--ar-path", required=True, help="AR checkpoint (ar_caption) producing the hypotheses")
    p.add_argument("--saic-path", required=True, help="SAIC checkpoint whose Filler refills them")
    p.add_argument("--split", default="test")
    p.add_argument("--rates", default="0.1,0.3,0.5,0.7", help="comma-separated p_mask values")
    p.add_argument("--seeds", type=int, default=4, help="Random masking: seeds averaged")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out-json")
    p.add_argument("--out-md")
    a, extra = p.parse_known_args(argv)
    report = run(a.data, a.ar_path, a.saic_path, a.split, [float(r) for r in a.rates.split(",")], a.seeds, a.beam,
                 a.batch_size, [x for x in extra if x != "--"])
    md = markdown(report)
    if a.out_json:
        atomic_write_text(a.out_json, json.dumps(report, indent=1) + "\n")
    if a.out_md:
        atomic_write_text(a.out_md, md)
    sys.stdout.write(md)
    return report


if __name__ == "__main__":
    main()
