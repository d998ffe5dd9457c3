"""How much an RDT checkpoint uses its retrieved sentence (issue #23's diagnostics).

    python examples/rdt/probe.py DATA --path CKPT --retrieval-file R.json [--split val] [--items 200]
        [--times 0.1,0.3,0.5,0.7,0.9] [--json-out probe.json]

For each evaluation item the item's first reference caption is noised at each time t'
(Eq. 1, one seeded ε per item), and one denoising pass (no self-condition) is run with the
condition set to each of: the retrieved top-1 sentence, a random sentence of the retrieval
file, no sentence, and the reference itself (copy test).  Printed per condition and t':

- ``nll``: the reference's cross-entropy per sentence slot (words + first </s>, nats);
- ``changed %`` (vs retrieved): sentence slots whose argmax word differs from the pass
  conditioned on the retrieved sentence (how much the output depends on the condition);
- ``mass`` per Semantic-Transformer layer: the attention weight (mean over heads) that the
  sentence slots give to the condition's tokens, summed over those tokens (0 with no sentence);
- ``copy %``: predicted words (argmax per sentence slot) that occur in the condition.
"""
import argparse
import json
import sys
from collections import defaultdict

import torch

from fairseq_nar_caption import inference
from fairseq_nar_caption.criterions.rdt_common import caption_bits
from fairseq_nar_caption.models.rdt import forward_noise

CONDITIONS = ("retrieved", "random", "none", "reference")


class AttentionMass:
    """Forward hooks on the Semantic Transformer's self-attention: per layer, the attention the
    first ``length`` positions (the caption slots) give to the rest (the condition's tokens)."""

    def __init__(self, layers):
        self.masses, self.length, self.handles = [], 0, []
        for layer in layers:
            attn = layer.self_attn
            self.handles.append(attn.register_forward_pre_hook(self._want_weights, with_kwargs=True))
            self.handles.append(attn.register_forward_hook(self._record))

    @staticmethod
    def _want_weights(module, args, kwargs):
        kwargs.update(need_weights=True, need_head_weights=False)
        return args, kwargs

    def _record(self, module, args, output):
        weights = output[1]  # B x T x S, mean over heads
        self.masses.append(weights[:, : self.length, self.length:].sum(-1))  # B x L

    def remove(self):
        for h in self.handles:
            h.remove()


def probe(loaded, split: str, items: int, times, batch_size: int = 50):
    task, model = loaded.task, loaded.models[0]
    task.load_dataset(split)
    dataset = task.dataset(split)
    if not hasattr(dataset, "test_condition"):
        raise SystemExit(f"{split}: no retrieved-sentence condition (give --retrieval-file)")
    hooks = AttentionMass(model.decoder.semantic)
    hooks.length = model.seq_len
    sums = defaultdict(float)
    counts = defaultdict(float)
    with torch.no_grad():
        for ti, t_value in enumerate(times):
            argmax = {}
            for cond in CONDITIONS:
                dataset.test_condition = cond
                for bi, sample in enumerate(inference.batches(dataset, batch_size, items)):
                    target, x0 = caption_bits(model, sample["target"], sample.get("item_ids"))
                    slots = model.sentence_mask(target)
                    g = torch.Generator().manual_seed(1000 * ti + bi)
                    noise = torch.randn(x0.shape, generator=g)
                    t = torch.full((x0.size(0),), t_value)
                    x_t, gamma = forward_noise(x0, t, model.noise_schedule, noise)
                    hooks.masses = []
                    encoder_out = model.forward_encoder(sample["net_input"])
                    logits, _ = model.denoise(x_t, gamma, encoder_out)
                    lprobs = torch.log_softmax(logits.float(), -1)
                    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                    key = (cond, t_value)
                    n = slots.sum().item()
                    sums[key + ("nll",)] += nll[slots].sum().item()
                    counts[key] += n
                    pred = logits.argmax(-1)
                    if cond == "retrieved":
                        argmax[bi] = pred
                    else:
                        sums[key + ("changed",)] += (pred != argmax[bi])[slots].sum().item()
                    for li, m in enumerate(hooks.masses):
                        sums[key + (f"mass{li}",)] += m[slots].sum().item()
                    cond_tokens = sample["net_input"]["retrieved_tokens"]
                    in_cond = (pred.unsqueeze(-1) == cond_tokens.unsqueeze(1)).any(-1)
                    sums[key + ("copy",)] += in_cond[slots].sum().item()
    hooks.remove()
    dataset.test_condition = "retrieved"
    rows = []
    for t_value in times:
        for cond in CONDITIONS:
            key = (cond, t_value)
            n = counts[key]
            row = {"t": t_value, "condition": cond, "nll": sums[key + ("nll",)] / n,
                   "changed": None if cond == "retrieved" else 100 * sums[key + ("changed",)] / n,
                   "copy": 100 * sums[key + ("copy",)] / n if cond != "none" else None,
                   "mass": [sums[key + (f"mass{li}",)] / n for li in range(len(model.decoder.semantic))]}
            rows.append(row)
    return rows


def table(rows) -> str:
    layers = len(rows[0]["mass"])
    head = "| t' | condition | nll | changed % vs retrieved | copy % | " + \
        " | ".join(f"mass ST{li + 1}" for li in range(layers)) + " |"
    out = [head, "|" + "---|" * (5 + layers)]
    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        out.append(f"| {r['t']:.1f} | {r['condition']} | {r['nll']:.3f} | {fmt(r['changed'], '{:.1f}')} | "
                   f"{fmt(r['copy'], '{:.1f}')} | " + " | ".join(f"{m:.3f}" for m in r["mass"]) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data")
    p.add_argument("--path", required=True)
    p.add_argument("--retrieval-file", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--times", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--json-out")
    a, rest = p.parse_known_args(argv)
    torch.set_num_threads(1)
    loaded = inference.load(a.data, ["--path", a.path, "--retrieval-file", a.retrieval_file,
                                     "--generator", "diffusion", *rest])
    rows = probe(loaded, a.split, a.items, [float(t) for t in a.times.split(",")])
    print(f"{a.path}: {a.split}, {a.items} items")
    print(table(rows))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"path": a.path, "split": a.split, "items": a.items, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
