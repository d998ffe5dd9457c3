"""Image-to-text retrieval over the training captions: the retrieved-sentence file of RDT.

    nar-caption-retrieve DATA [--splits train,val,test] [--k 20]
        [--feature-files features.h5] [--feature-key-template '{}'] [--ridge 1.0]
        [--backend sparse|faiss] [--block-mb 256] [--out DATA/retrieval.json]

The paper ranks the training sentences by CLIP image-text cosine similarity (FAISS
IndexFlatIP, top 20).  No CLIP weights can be fetched here, so the embedding is one we
can compute from the data itself, in closed form, and document:

- text: TF-IDF bag of words of a caption (scikit-learn's ``TfidfVectorizer``: raw counts,
  IDF ln(n / df) + 1 over the unique training captions, L2-normalised);
- image: the item's features mean-pooled over its tokens (``--pooling mean``) or all its
  tokens concatenated (``flat``, for fixed grids: keeps where things are), standardised with the training
  mean/std, plus a constant 1 (bias);
- a linear map W from image to text space by ridge regression on the training items,
  target = the mean TF-IDF vector of the item's training captions:
  W = (XᵀX + ρI)⁻¹ XᵀY (``--ridge`` ρ);
- score(image, caption) = cos(normalise(x W), caption vector).  The query's norm does not
  change its ranking, so this is an inner-product search, done one of two ways (the same
  ranking up to float rounding):
  ``sparse`` (default): caption matrix (sparse, n_sentences x V) times blocks of query
  vectors x W, a running top-k over blocks of sentences; ``faiss``: the captions mapped into
  feature space, c Wᵀ (n_sentences x (D + 1)), searched block by block with
  ``faiss.IndexFlatIP``.

Memory stays bounded for COCO-size corpora (≈ 600 k sentences, 120 k images): features are
pooled as they are read (one item at a time, never all grids at once), the ridge target is a
sparse product, and every score block is at most ``--block-mb`` MiB.  What is held whole: the
pooled features (n_items x D), W (D x V), the sparse caption matrix and the results.
``scripts/retrieval_scale.py`` measures time and peak memory on a synthetic corpus of that size.

No leakage: for an item of the training split, every pool sentence that is one of its
own captions is excluded (also when another image has the identical caption).  The
ridge map itself is fit on the training items' captions (as CLIP was fit on other data,
this is the one place the toy setting sees its own training captions).  Output (JSON,
written whole or not at all): ``{"embedding": ..., "k": K, "settings": {...}, "items": {item_id: [K
sentences, best first]}}`` for every item of the given splits; beside it ``retrieval.ranker.npz``
(mean, std, W, the sentences: ``Ranker``), with which ``hub.py`` retrieves for new images.
"""
import argparse
import json
import os
from collections import Counter
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.feature_store import MultiModalFeatures, open_feature_store
from ..data.manifest import eval_item_ids, read_manifest
from ..errors import DataError
from ..files import atomic_write_text
from .common import run_main

EMBEDDING = ("ridge map from standardised mean-pooled features to TF-IDF bag-of-words (cli/retrieve.py), "
             "cosine similarity")
BACKENDS = ("sparse", "faiss")


class CaptionPool:
    """The unique training captions, their TF-IDF vectors (scipy CSR, float32, L2-normalised)
    and owners (the training items each caption belongs to)."""

    def __init__(self, train_rows):
        from sklearn.feature_extraction.text import TfidfVectorizer

        owners: Dict[str, set] = {}
        for r in train_rows:
            owners.setdefault(r.caption, set()).add(r.item_id)
        self.sentences = list(owners)
        self.owners = [owners[s] for s in self.sentences]
        self.tfidf = TfidfVectorizer(lowercase=False, tokenizer=str.split, token_pattern=None, smooth_idf=False,
                                     norm="l2", dtype=np.float32)
        self.matrix = self.tfidf.fit_transform(self.sentences).tocsr()
        self.vocab = self.tfidf.vocabulary_

    def vectors(self, sentences: Sequence[str]):
        return self.tfidf.transform(sentences).tocsr()


def pooled_features(features: MultiModalFeatures, ids: Sequence[str], pooling: str = "mean") -> torch.Tensor:
    """mean: the mean feature vector; flat: all tokens concatenated (needs one token count).
    Pooled item by item into one (n, D) array: the grids are never all in memory."""
    if pooling not in ("mean", "flat"):
        raise ValueError(f"unknown --pooling {pooling!r} (mean, flat)")
    out, first = None, None
    for k, i in enumerate(ids):
        a = features.get(i).astype(np.float32)
        if first is None:
            first = a.shape
            out = np.empty((len(ids), a.shape[1] if pooling == "mean" else a.size), np.float32)
        if pooling == "flat" and a.shape != first:
            raise DataError(f"--pooling flat needs one feature shape for every item: item {ids[0]} has "
                            f"{first}, item {i} has {a.shape}")
        out[k] = a.mean(0) if pooling == "mean" else a.reshape(-1)
    if out is None:
        raise DataError("no items to pool")
    return torch.from_numpy(out)


def fit_ridge(x: torch.Tensor, pool: CaptionPool, train_rows, train_ids: List[str], ridge: float) -> torch.Tensor:
    """W = (XᵀX + ρI)⁻¹ XᵀY, Y = the mean caption vector of each training item (sparse:
    Y = A C with A[item, sentence] = 1 / n_captions(item) per caption row)."""
    import scipy.sparse as sp

    row_of = {i: k for k, i in enumerate(train_ids)}
    sent_of = {s: k for k, s in enumerate(pool.sentences)}
    n_caps = Counter(r.item_id for r in train_rows)
    a = sp.csr_matrix((np.array([1.0 / n_caps[r.item_id] for r in train_rows], np.float32),
                       (np.array([row_of[r.item_id] for r in train_rows]),
                        np.array([sent_of[r.caption] for r in train_rows]))),
                      shape=(len(train_ids), len(pool.sentences)))
    y = (a @ pool.matrix).tocsc()  # n_train x V, sparse
    xty = torch.from_numpy(np.ascontiguousarray((y.T @ x.numpy()).T, dtype=np.float32))  # D x V
    gram = x.t() @ x + ridge * torch.eye(x.size(1))
    return torch.linalg.solve(gram, xty)


def _merge_topk(best_s, best_i, s, i, k):
    """Row-wise top-k of two (score, index) candidate sets."""
    s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
    top = np.lexsort((i, -s))[:, :k]  # by score, ties by sentence index
    return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def search(x: torch.Tensor, w: torch.Tensor, pool: CaptionPool, k: int, exclude: List[set],
           backend: str = "sparse", block_mb: float = 256) -> List[List[int]]:
    """Top-k pool rows per query by (x W) · c, skipping each query's excluded rows.
    ``x``: design rows (n_q x (D + 1)); every score block holds at most ``block_mb`` MiB."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown --backend {backend!r} ({', '.join(BACKENDS)})")
    n_q, n_pool = x.size(0), len(pool.sentences)
    extra = max((len(e) for e in exclude), default=0)
    kk = min(k + extra, n_pool)
    cells = max(1, int(block_mb * (1 << 20) / 4))  # float32 scores per block
    best_s = np.full((n_q, 0), -np.inf, np.float32)
    best_i = np.zeros((n_q, 0), np.int64)
    if backend == "faiss":
        import faiss

        q = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        wt = np.ascontiguousarray(w.numpy().T)  # V x (D + 1)
        rows = max(1, min(n_pool, cells // max(1, x.size(1))))
        for start in range(0, n_pool, rows):
            p = np.ascontiguousarray(pool.matrix[start:start + rows] @ wt, dtype=np.float32)
            index = faiss.IndexFlatIP(p.shape[1])
            index.add(p)
            s, i = index.search(q, min(kk, p.shape[0]))
            best_s, best_i = _merge_topk(best_s, best_i, s, np.where(i >= 0, i + start, -1), kk)
        out = []
        for row, ex in zip(best_i.tolist(), exclude):
            out.append([j for j in row if j >= 0 and j not in ex][:k])
        return out
    # sparse: pool.matrix (n_pool x V) @ (x W)ᵀ, blocks of queries x blocks of sentences
    q_rows = max(1, min(n_q, cells // max(1, min(n_pool, cells))))
    p_rows = max(1, cells // q_rows)
    out = []
    for qs in range(0, n_q, q_rows):
        e = np.ascontiguousarray((x[qs:qs + q_rows] @ w).numpy().T)  # V x Q
        ex_rows = exclude[qs:qs + q_rows]
        bs = np.full((e.shape[1], 0), -np.inf, np.float32)
        bi = np.zeros((e.shape[1], 0), np.int64)
        for ps in range(0, n_pool, p_rows):
            s = torch.from_numpy(pool.matrix[ps:ps + p_rows] @ e)  # P x Q scores
            for r, ex in enumerate(ex_rows):
                rows = [j - ps for j in ex if ps <= j < ps + s.size(0)]
                if rows:
                    s[rows, r] = -np.inf
            top_s, top_i = s.topk(min(k, s.size(0)), dim=0)  # no copy of the block
            bs, bi = _merge_topk(bs, bi, top_s.t().numpy(), top_i.t().numpy() + ps, k)
        for r in range(e.shape[1]):
            out.append([int(j) for j, v in zip(bi[r], bs[r]) if v > -np.inf])
    return out


class Ranker:
    """The fitted embedding (training mean / std, W, the caption pool): ranks the training
    sentences for any pooled feature vector, also of a new image (``hub.py``).  ``save`` /
    ``load``: an ``.npz`` beside the retrieval file (``ranker_path``)."""

    def __init__(self, pool: CaptionPool, mean: torch.Tensor, std: torch.Tensor, w: torch.Tensor, settings: dict):
        self.pool, self.mean, self.std, self.w, self.settings = pool, mean, std, w, settings

    @classmethod
    def fit(cls, data: str, feature_files: str = "features.h5", key_template: str = "{}", ridge: float = 1.0,
            train_split: str = "train", pooling: str = "mean"):
        """(ranker, the feature stores, training rows, training ids, their pooled features)."""
        paths = [p if os.path.isabs(p) else os.path.join(data, p) for p in feature_files.split(",")]
        features = MultiModalFeatures([open_feature_store(p, key_template) for p in paths])
        train_rows = read_manifest(os.path.join(data, f"{train_split}.tsv"))
        pool = CaptionPool(train_rows)
        train_ids = eval_item_ids(train_rows)
        features.validate(train_ids, check="lazy")
        x_train = pooled_features(features, train_ids, pooling)
        mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
        settings = {"feature_files": feature_files, "feature_key_template": key_template, "ridge": ridge,
                    "pooling": pooling, "train_split": train_split}
        ranker = cls(pool, mean, std, torch.zeros(0), settings)
        ranker.w = fit_ridge(ranker.design(x_train), pool, train_rows, train_ids, ridge)
        return ranker, features, train_rows, train_ids, x_train

    def design(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - self.mean) / self.std, torch.ones(x.size(0), 1)], dim=1)

    def pool_array(self, a: np.ndarray) -> np.ndarray:
        """One item's (N, D) features (the stores of ``settings['feature_files']``, concatenated)
        pooled as the ranker was fit."""
        a = np.asarray(a, dtype=np.float32)
        return a.mean(0) if self.settings["pooling"] == "mean" else a.reshape(-1)

    def rank(self, pooled: torch.Tensor, k: int, exclude=None, backend: str = "sparse",
             block_mb: float = 256) -> List[List[str]]:
        if pooled.size(1) != self.mean.numel():
            raise DataError(f"pooled features of dim {pooled.size(1)}, the ranker was fit on {self.mean.numel()}")
        exclude = exclude if exclude is not None else [set()] * pooled.size(0)
        found = search(self.design(pooled), self.w, self.pool, k, exclude, backend, block_mb)
        return [[self.pool.sentences[j] for j in row] for row in found]

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, mean=self.mean.numpy(), std=self.std.numpy(), w=self.w.numpy(),
                 sentences=np.array(self.pool.sentences), settings=np.array(json.dumps(self.settings)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Ranker":
        if not os.path.isfile(path):
            raise DataError(f"{path}: ranker not found (nar-caption-retrieve writes it beside the retrieval file)")
        z = np.load(path, allow_pickle=False)
        sentences = [str(s) for s in z["sentences"]]
        pool = CaptionPool([SimpleNamespace(item_id=str(k), caption=c) for k, c in enumerate(sentences)])
        return cls(pool, torch.from_numpy(z["mean"]), torch.from_numpy(z["std"]), torch.from_numpy(z["w"]),
                   json.loads(str(z["settings"])))


def ranker_path(retrieval_file: str) -> str:
    """Where the ranker of a retrieval file lives: ``retrieval.json`` → ``retrieval.ranker.npz``."""
    return os.path.splitext(retrieval_file)[0] + ".ranker.npz"


def retrieve(data: str, splits: Sequence[str], k: int = 20, feature_files: str = "features.h5",
             key_template: str = "{}", ridge: float = 1.0, train_split: str = "train",
             pooling: str = "mean", backend: str = "sparse", block_mb: float = 256,
             save_ranker: Optional[str] = None) -> Dict[str, List[str]]:
    ranker, features, train_rows, train_ids, x_train = Ranker.fit(data, feature_files, key_template, ridge,
                                                                 train_split, pooling)
    if save_ranker:
        ranker.save(save_ranker)
    own: Dict[str, set] = {}
    for j, owners in enumerate(ranker.pool.owners):
        for i in owners:
            own.setdefault(i, set()).add(j)
    items: Dict[str, List[str]] = {}
    for split in splits:
        ids = eval_item_ids(read_manifest(os.path.join(data, f"{split}.tsv")))
        ids = [i for i in ids if i not in items]
        if not ids:
            continue
        features.validate(ids, check="lazy")
        x = x_train if split == train_split and ids == train_ids else pooled_features(features, ids, pooling)
        # training items never retrieve their own captions; others may hold captions equal to training ones
        exclude = [own.get(i, set()) if split == train_split else set() for i in ids]
        for i, found in zip(ids, ranker.rank(x, k, exclude, backend, block_mb)):
            if not found:
                raise DataError(f"{data}: item {i} of {split}: no sentence left to retrieve")
            items[i] = found
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--train-split", default="train", help="the caption pool and the ridge fit")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--feature-files", default="features.h5",
                   help="comma-separated stores (relative to DATA or absolute), modalities concatenated")
    p.add_argument("--feature-key-template", default="{}")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--pooling", default="mean", choices=["mean", "flat"],
                   help="image vector: mean over tokens, or all tokens concatenated "
                        "(fixed grids; n_items x N·D floats)")
    p.add_argument("--backend", default="sparse", choices=BACKENDS,
                   help="sparse: chunked TF-IDF-space products; "
                        "faiss: IndexFlatIP over the captions mapped to feature space")
    p.add_argument("--block-mb", type=float, default=256, help="largest score block (MiB)")
    p.add_argument("--out", default=None, help="default DATA/retrieval.json")
    a = p.parse_args(argv)
    out = a.out or os.path.join(a.data, "retrieval.json")
    items = retrieve(a.data, a.splits.split(","), a.k, a.feature_files, a.feature_key_template, a.ridge,
                     a.train_split, a.pooling, a.backend, a.block_mb, save_ranker=ranker_path(out))
    settings = {"feature_files": a.feature_files, "feature_key_template": a.feature_key_template, "ridge": a.ridge,
                "pooling": a.pooling, "train_split": a.train_split}
    atomic_write_text(out, json.dumps({"embedding": EMBEDDING, "k": a.k, "settings": settings, "items": items}))
    print(f"wrote {out}: top-{a.k} sentences for {len(items)} items; ranker {ranker_path(out)}")



def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, "nar-caption-retrieve")


if __name__ == "__main__":
    cli_main()
