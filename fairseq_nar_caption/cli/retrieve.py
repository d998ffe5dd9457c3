"""Image-to-text retrieval over the training captions: the retrieved-sentence file of RDT.

    python -m fairseq_nar_caption.cli.retrieve DATA [--splits train,val,test] [--k 20]
        [--feature-files features.h5] [--feature-key-template '{}'] [--ridge 1.0]
        [--out DATA/retrieval.json]

The paper ranks the training sentences by CLIP image-text cosine similarity (FAISS
IndexFlatIP, top 20).  No CLIP weights can be fetched here, so the embedding is one we
can compute from the data itself, in closed form, and document:

- text: TF-IDF bag of words of a caption (IDF over the training captions), L2-normalised;
- image: the item's features mean-pooled over its tokens (``--pooling mean``) or all its
  tokens concatenated (``flat``, for fixed grids: keeps where things are), standardised with the training
  mean/std, plus a constant 1 (bias);
- a linear map W from image to text space by ridge regression on the training items,
  target = the mean TF-IDF vector of the item's training captions:
  W = (XᵀX + ρI)⁻¹ XᵀY (``--ridge`` ρ);
- score(image, caption) = cos(normalise(x W), caption vector): an inner-product search
  (``faiss.IndexFlatIP`` when faiss is importable, otherwise a torch matrix product; both
  give the same ranking).

No leakage: for an item of the training split, every pool sentence that is one of its
own captions is excluded (also when another image has the identical caption).  The
ridge map itself is fit on the training items' captions (as CLIP was fit on other data,
this is the one place the toy setting sees its own training captions).  Output (JSON,
written whole or not at all): ``{"embedding": ..., "k": K, "items": {item_id: [K
sentences, best first]}}`` for every item of the given splits.
"""
import argparse
import json
import math
import os
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np
import torch

from ..data.feature_store import MultiModalFeatures, open_feature_store
from ..data.manifest import DataError, eval_item_ids, read_manifest
from ..utils import atomic_write_text

EMBEDDING = ("ridge map from standardised mean-pooled features to TF-IDF bag-of-words (cli/retrieve.py), "
             "cosine similarity")


class CaptionPool:
    """The unique training captions, their TF-IDF vectors (CSR, L2-normalised) and owners."""

    def __init__(self, train_rows):
        owners: Dict[str, set] = {}
        for r in train_rows:
            owners.setdefault(r.caption, set()).add(r.item_id)
        self.sentences = list(owners)
        self.owners = [owners[s] for s in self.sentences]
        words = sorted({w for s in self.sentences for w in s.split()})
        self.vocab = {w: i for i, w in enumerate(words)}
        df = Counter(w for s in self.sentences for w in set(s.split()))
        self.idf = torch.tensor([math.log(len(self.sentences) / df[w]) + 1.0 for w in words])
        self.matrix = self.vectors(self.sentences)

    def vectors(self, sentences: Sequence[str]) -> torch.Tensor:
        crow, col, val = [0], [], []
        for s in sentences:
            counts = Counter(self.vocab[w] for w in s.split() if w in self.vocab)
            idx = sorted(counts)
            v = torch.tensor([counts[i] for i in idx], dtype=torch.float32) * self.idf[idx]
            v = v / v.norm().clamp(min=1e-12)
            col.extend(idx)
            val.extend(v.tolist())
            crow.append(len(col))
        return torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col, dtype=torch.long),
                                       torch.tensor(val, dtype=torch.float32), (len(sentences), len(self.vocab)))


def pooled_features(features: MultiModalFeatures, ids: Sequence[str], pooling: str = "mean") -> torch.Tensor:
    """mean: the mean feature vector; flat: all tokens concatenated (needs one token count)."""
    arrays = [features.get(i).astype(np.float32) for i in ids]
    if pooling == "mean":
        return torch.from_numpy(np.stack([a.mean(0) for a in arrays]))
    if pooling == "flat":
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DataError(f"--pooling flat needs one feature shape for every item, got {sorted(shapes)[:3]}")
        return torch.from_numpy(np.stack([a.reshape(-1) for a in arrays]))
    raise ValueError(f"unknown --pooling {pooling!r} (mean, flat)")


def fit_ridge(x: torch.Tensor, pool: CaptionPool, train_rows, train_ids: List[str], ridge: float) -> torch.Tensor:
    """W = (XᵀX + ρI)⁻¹ XᵀY, Y = the mean caption vector of each training item."""
    row_of = {i: k for k, i in enumerate(train_ids)}
    sent_of = {s: k for k, s in enumerate(pool.sentences)}
    n_caps = Counter(r.item_id for r in train_rows)
    # XᵀY = Σ_rows x_item ⊗ c / n_caps(item), as (C_rowsᵀ X_rows)ᵀ with a sparse C_rows
    items = torch.tensor([row_of[r.item_id] for r in train_rows])
    weights = torch.tensor([1.0 / n_caps[r.item_id] for r in train_rows])
    caps = torch.tensor([sent_of[r.caption] for r in train_rows])
    xty = torch.zeros(x.size(1), len(pool.vocab))
    dense = pool.matrix.to_dense() if len(pool.sentences) * len(pool.vocab) <= 5e7 else None
    for start in range(0, len(train_rows), 4096):
        sl = slice(start, start + 4096)
        c = dense[caps[sl]] if dense is not None else torch.stack([pool.matrix[int(j)].to_dense() for j in caps[sl]])
        xty += (x[items[sl]] * weights[sl, None]).t() @ c
    gram = x.t() @ x + ridge * torch.eye(x.size(1))
    return torch.linalg.solve(gram, xty)


def search(queries: torch.Tensor, pool: CaptionPool, k: int, exclude: List[set]) -> List[List[int]]:
    """Top-k pool rows by inner product per query, skipping the excluded rows."""
    try:
        import faiss  # only when already installed
    except ImportError:
        faiss = None
    out = []
    if faiss is not None:
        index = faiss.IndexFlatIP(queries.size(1))
        index.add(pool.matrix.to_dense().numpy())
        extra = max((len(e) for e in exclude), default=0)
        _, found = index.search(queries.numpy(), k + extra)
        for row, ex in zip(found.tolist(), exclude):
            out.append([j for j in row if j >= 0 and j not in ex][:k])
        return out
    for start in range(0, queries.size(0), 256):
        q = queries[start:start + 256]
        scores = (pool.matrix @ q.t()).t()  # n_q x n_pool
        for r, ex in enumerate(exclude[start:start + 256]):
            if ex:
                scores[r, list(ex)] = -math.inf
        out.extend(scores.topk(min(k, scores.size(1)), dim=1).indices.tolist())
    return out


def retrieve(data: str, splits: Sequence[str], k: int = 20, feature_files: str = "features.h5",
             key_template: str = "{}", ridge: float = 1.0, train_split: str = "train",
             pooling: str = "mean") -> Dict[str, List[str]]:
    paths = [p if os.path.isabs(p) else os.path.join(data, p) for p in feature_files.split(",")]
    features = MultiModalFeatures([open_feature_store(p, key_template) for p in paths])
    train_rows = read_manifest(os.path.join(data, f"{train_split}.tsv"))
    pool = CaptionPool(train_rows)
    train_ids = eval_item_ids(train_rows)
    features.validate(train_ids, check="lazy")
    x_train = pooled_features(features, train_ids, pooling)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)

    def design(x):
        return torch.cat([(x - mean) / std, torch.ones(x.size(0), 1)], dim=1)

    w = fit_ridge(design(x_train), pool, train_rows, train_ids, ridge)
    own: Dict[str, set] = {}
    for j, owners in enumerate(pool.owners):
        for i in owners:
            own.setdefault(i, set()).add(j)
    items: Dict[str, List[str]] = {}
    for split in splits:
        ids = eval_item_ids(read_manifest(os.path.join(data, f"{split}.tsv")))
        features.validate(ids, check="lazy")
        e = design(pooled_features(features, ids, pooling)) @ w
        e = e / e.norm(dim=1, keepdim=True).clamp(min=1e-12)
        # training items never retrieve their own captions; others may hold captions equal to training ones
        exclude = [own.get(i, set()) if split == train_split else set() for i in ids]
        for i, found in zip(ids, search(e, pool, k, exclude)):
            if i in items:
                continue
            if not found:
                raise DataError(f"{data}: item {i} of {split}: no sentence left to retrieve")
            items[i] = [pool.sentences[j] for j in found]
    return items


def cli_main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--train-split", default="train", help="the caption pool and the ridge fit")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--feature-files", default="features.h5")
    p.add_argument("--feature-key-template", default="{}")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--pooling", default="mean", choices=["mean", "flat"],
                   help="image vector: mean over tokens, or all tokens concatenated (fixed grids)")
    p.add_argument("--out", default=None, help="default DATA/retrieval.json")
    a = p.parse_args(argv)
    items = retrieve(a.data, a.splits.split(","), a.k, a.feature_files, a.feature_key_template, a.ridge,
                     a.train_split, a.pooling)
    out = a.out or os.path.join(a.data, "retrieval.json")
    atomic_write_text(out, json.dumps({"embedding": EMBEDDING, "k": a.k, "items": items}))
    print(f"wrote {out}: top-{a.k} sentences for {len(items)} items")


if __name__ == "__main__":
    cli_main()
