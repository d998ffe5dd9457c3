#!/usr/bin/env python
"""NARVL decoding vs one bare forward pass of the same network, batch 1 (issue #5 goal: ≤ 1.2×).

    python examples/narvl/bare_forward.py DATA --subset test --max-items 200 [--warmup 5] \\
        -- --path ckpt.pt --task vision_language --vl-task caption ... --generator ctc

Per item (batch 1, same order, CPU or ``--device cuda`` with synchronisation): the clock
around ``model(**net_input)`` (encoder + one decoder pass, logits only) and around the
full decode (``inference.decode_batch``: encoder, decoder pass, argmax, collapse,
detokenisation), both timed with ``evaluation/latency``'s conventions (warm-up excluded).
Prints the two means and their ratio.
"""
import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/examples/", 1)[0])
from fairseq_nar_caption import inference  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--subset", default="test")
    p.add_argument("--max-items", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a, extra = p.parse_known_args(argv)
    args = [x for x in extra if x != "--"] + (["--cpu"] if a.device == "cpu" else [])
    loaded = inference.load(a.data, args, device=a.device)
    loaded.task.load_dataset(a.subset)
    ds = loaded.task.dataset(a.subset)
    model = loaded.models[0]
    sync = (lambda: torch.cuda.synchronize()) if a.device == "cuda" else (lambda: None)
    bare, full = [], []
    with torch.no_grad():
        for i, sample in enumerate(inference.batches(ds, 1, a.max_items)):
            sample = inference.to_device(sample, loaded.device)
            net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
            sync(); t0 = time.perf_counter()
            model(**net_input)
            sync(); t1 = time.perf_counter()
            inference.decode_batch(loaded, sample)
            sync(); t2 = time.perf_counter()
            if i >= a.warmup:
                bare.append(t1 - t0)
                full.append(t2 - t1)
    b, f = 1000 * statistics.fmean(bare), 1000 * statistics.fmean(full)
    print(f"bare forward {b:.2f} ms, full decode {f:.2f} ms, ratio {f / b:.2f} ({len(bare)} items, "
          f"{torch.get_num_threads()} threads, {a.device})")


if __name__ == "__main__":
    main()
