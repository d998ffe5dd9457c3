"""The ranker behind RDT's retrieved sentences: image-to-text retrieval over the training captions.

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
this is the one place the toy setting sees its own training captions).

``Ranker`` is the fitted embedding (saved beside the retrieval file, ``ranker_path``, and loaded by
the hub to retrieve for new images); ``retrieve_with_ranker`` fits it and ranks the training
sentences for every item of some splits (``nar-caption-retrieve`` writes the result).
"""
import io
import json
import math
import os
import zipfile
from collections import Counter
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError, OptionError
from ..files import atomic_path
from ..progress import progress_bar
from .feature_store import DEFAULT_MAX_ABS, MultiModalFeatures, open_feature_store
from .manifest import eval_item_ids, read_manifest
from .retrieval import check_fingerprint, data_fingerprint


EMBEDDING = ("ridge map from standardised mean-pooled features to TF-IDF bag-of-words (data/ranking.py), "
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


def _bar(total: int, desc: str, unit: str, progress: Optional[bool]):
    """A progress bar on stderr: ``progress`` None = only on a terminal, False = never (library
    calls, the hub), True = always."""
    return progress_bar(total, desc, unit, enabled=progress)


def pooled_features(features: MultiModalFeatures, ids: Sequence[str], pooling: str = "mean",
                    progress: Optional[bool] = False, desc: str = "pooling") -> torch.Tensor:
    """mean: the mean feature vector; flat: all tokens concatenated (needs one token count).
    Pooled item by item into one (n, D) array: the grids are never all in memory."""
    if pooling not in ("mean", "flat"):
        raise ValueError(f"unknown --pooling {pooling!r} (mean, flat)")
    out, first = None, None
    with _bar(len(ids), desc, "item", progress) as bar:
        for k, i in enumerate(ids):
            a = features.get(i).astype(np.float32)
            if first is None:
                first = a.shape
                out = np.empty((len(ids), a.shape[1] if pooling == "mean" else a.size), np.float32)
            if pooling == "flat" and a.shape != first:
                raise DataError(f"--pooling flat needs one feature shape for every item: item {ids[0]} has "
                                f"{first}, item {i} has {a.shape}")
            out[k] = a.mean(0) if pooling == "mean" else a.reshape(-1)
            bar.update(1)
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
           backend: str = "sparse", block_mb: float = 256, progress: Optional[bool] = False,
           desc: str = "search") -> List[List[int]]:
    """Top-k pool rows per query by (x W) · c, skipping each query's excluded rows.
    ``x``: design rows (n_q x (D + 1)); every score block holds at most ``block_mb`` MiB."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown --backend {backend!r} ({', '.join(BACKENDS)})")
    if not (k >= 1 and block_mb > 0 and math.isfinite(block_mb)):
        raise OptionError(f"need k >= 1 and a finite block size > 0 MiB, got k={k}, block_mb={block_mb}")
    n_q, n_pool = x.size(0), len(pool.sentences)
    extra = max((len(e) for e in exclude), default=0)
    kk = min(k + extra, n_pool)
    cells = max(1, int(block_mb * (1 << 20) / 4))  # float32 scores per block
    best_s = np.full((n_q, 0), -np.inf, np.float32)
    best_i = np.zeros((n_q, 0), np.int64)
    if backend == "faiss":
        import logging

        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it loads: not news
        import faiss

        q = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        wt = np.ascontiguousarray(w.numpy().T)  # V x (D + 1)
        rows = max(1, min(n_pool, cells // max(1, x.size(1))))
        with _bar(-(-n_pool // rows), desc, "block", progress) as bar:
            for start in range(0, n_pool, rows):
                p = np.ascontiguousarray(pool.matrix[start:start + rows] @ wt, dtype=np.float32)
                index = faiss.IndexFlatIP(p.shape[1])
                index.add(p)
                s, i = index.search(q, min(kk, p.shape[0]))
                best_s, best_i = _merge_topk(best_s, best_i, s, np.where(i >= 0, i + start, -1), kk)
                bar.update(1)
        out = []
        for row, ex in zip(best_i.tolist(), exclude):
            out.append([j for j in row if j >= 0 and j not in ex][:k])
        return out
    # sparse: pool.matrix (n_pool x V) @ (x W)ᵀ, blocks of queries x blocks of sentences
    q_rows = max(1, min(n_q, cells // max(1, min(n_pool, cells))))
    p_rows = max(1, cells // q_rows)
    out = []
    with _bar(-(-n_q // q_rows) * -(-n_pool // p_rows), desc, "block", progress) as bar:
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
                bar.update(1)
            for r in range(e.shape[1]):
                out.append([int(j) for j, v in zip(bi[r], bs[r]) if v > -np.inf])
    return out


def _npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    """``np.savez`` without its clock: the same arrays give the same bytes (fixed zip entry times)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, a in arrays.items():
            with z.open(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


class Ranker:
    """The fitted embedding (training mean / std, W, the caption pool): ranks the training
    sentences for any pooled feature vector, also of a new image (``hub.py``).  ``save`` /
    ``load``: an ``.npz`` beside the retrieval file (``ranker_path``), with the settings and the
    fingerprint of the data it was fit on (``data/retrieval.py``)."""

    def __init__(self, pool: CaptionPool, mean: torch.Tensor, std: torch.Tensor, w: torch.Tensor, settings: dict,
                 fingerprint: Optional[dict] = None):
        self.pool, self.mean, self.std, self.w, self.settings = pool, mean, std, w, settings
        self.fingerprint = fingerprint

    @classmethod
    def fit(cls, data: str, feature_files: str = "features.h5", key_template: str = "{}", ridge: float = 1.0,
            train_split: str = "train", pooling: str = "mean", splits: Sequence[str] = (),
            progress: Optional[bool] = False, max_abs: Optional[float] = DEFAULT_MAX_ABS):
        """(ranker, the feature stores, training rows, training ids, their pooled features).
        The ranker's fingerprint covers the training manifest, ``splits`` and the stores."""
        paths = [p if os.path.isabs(p) else os.path.join(data, p) for p in feature_files.split(",")]
        features = MultiModalFeatures([open_feature_store(p, key_template, max_abs) for p in paths])
        fingerprint = data_fingerprint(data, splits, train_split, stores=features.stores)
        train_rows = read_manifest(os.path.join(data, f"{train_split}.tsv"))
        pool = CaptionPool(train_rows)
        train_ids = eval_item_ids(train_rows)
        features.validate(train_ids, check="lazy")
        x_train = pooled_features(features, train_ids, pooling, progress, f"pooling {train_split}")
        mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
        settings = {"feature_files": feature_files, "feature_key_template": key_template, "ridge": ridge,
                    "pooling": pooling, "train_split": train_split}
        ranker = cls(pool, mean, std, torch.zeros(0), settings, fingerprint)
        try:
            ranker.w = fit_ridge(ranker.design(x_train), pool, train_rows, train_ids, ridge)
        except torch.linalg.LinAlgError:
            raise OptionError(f"--ridge {ridge}: the ridge system of the {len(train_ids)} training items is "
                              f"singular; use --ridge > 0") from None
        return ranker, features, train_rows, train_ids, x_train

    def design(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(x - self.mean) / self.std, torch.ones(x.size(0), 1)], dim=1)

    def pool_array(self, a: np.ndarray) -> np.ndarray:
        """One item's (N, D) features (the stores of ``settings['feature_files']``, concatenated)
        pooled as the ranker was fit."""
        a = np.asarray(a, dtype=np.float32)
        return a.mean(0) if self.settings["pooling"] == "mean" else a.reshape(-1)

    def rank(self, pooled: torch.Tensor, k: int, exclude=None, backend: str = "sparse",
             block_mb: float = 256, progress: Optional[bool] = False, desc: str = "search") -> List[List[str]]:
        if pooled.size(1) != self.mean.numel():
            raise DataError(f"pooled features of dim {pooled.size(1)}, the ranker was fit on {self.mean.numel()}")
        exclude = exclude if exclude is not None else [set()] * pooled.size(0)
        found = search(self.design(pooled), self.w, self.pool, k, exclude, backend, block_mb, progress, desc)
        return [[self.pool.sentences[j] for j in row] for row in found]

    def npz_bytes(self) -> bytes:
        arrays = {"mean": self.mean.numpy(), "std": self.std.numpy(), "w": self.w.numpy(),
                  "sentences": np.array(self.pool.sentences), "settings": np.array(json.dumps(self.settings))}
        if self.fingerprint is not None:
            arrays["fingerprint"] = np.array(json.dumps(self.fingerprint, sort_keys=True))
        return _npz_bytes(arrays)

    def save(self, path: str, made_by: Optional[str] = None) -> None:
        """Written whole or not at all (``files.atomic_path``: a temporary name of this process)."""
        with atomic_path(path, made_by) as tmp:
            with open(tmp, "wb") as f:
                f.write(self.npz_bytes())

    @classmethod
    def load(cls, path: str, data: Optional[str] = None, retrieval=None) -> "Ranker":
        """``data``: the folder it is used with (its fingerprint must match, ``check_fingerprint``);
        ``retrieval``: the ``RetrievalFile`` it must belong to (the same nar-caption-retrieve run's
        settings and fingerprint)."""
        if not os.path.isfile(path):
            raise DataError(f"{path}: ranker not found (nar-caption-retrieve writes it beside the retrieval file)")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            sentences = [str(s) for s in arrays["sentences"]]
            settings = json.loads(str(arrays["settings"]))
            fingerprint = json.loads(str(arrays["fingerprint"])) if "fingerprint" in arrays else None
            mean, std, w = (torch.from_numpy(arrays[k]) for k in ("mean", "std", "w"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a ranker nar-caption-retrieve wrote ({type(e).__name__}: {e}); "
                            f"run nar-caption-retrieve again") from None
        if data is not None:
            check_fingerprint(path, fingerprint, data)
        if retrieval is not None and (fingerprint != retrieval.fingerprint or settings != retrieval.settings):
            raise DataError(f"{path}: not the ranker of {retrieval.path} (another nar-caption-retrieve run: other "
                            f"settings or data); run nar-caption-retrieve again on this data")
        pool = CaptionPool([SimpleNamespace(item_id=str(k), caption=c) for k, c in enumerate(sentences)])
        return cls(pool, mean, std, w, settings, fingerprint)


def ranker_path(retrieval_file: str) -> str:
    """Where the ranker of a retrieval file lives: ``retrieval.json`` → ``retrieval.ranker.npz``."""
    return os.path.splitext(retrieval_file)[0] + ".ranker.npz"


def retrieve_with_ranker(data: str, splits: Sequence[str], k: int = 20, feature_files: str = "features.h5",
                         key_template: str = "{}", ridge: float = 1.0, train_split: str = "train",
                         pooling: str = "mean", backend: str = "sparse", block_mb: float = 256,
                         progress: Optional[bool] = False,
                         max_abs: Optional[float] = DEFAULT_MAX_ABS) -> Tuple[Ranker, Dict[str, List[str]]]:
    """(the fitted ranker, item id → top-k training sentences for every item of ``splits``)."""
    splits = list(dict.fromkeys(splits))
    ranker, features, train_rows, train_ids, x_train = Ranker.fit(
        data, feature_files, key_template, ridge, train_split, pooling, splits, progress, max_abs)
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
        x = x_train if split == train_split and ids == train_ids else \
            pooled_features(features, ids, pooling, progress, f"pooling {split}")
        # training items never retrieve their own captions; others may hold captions equal to training ones
        exclude = [own.get(i, set()) if split == train_split else set() for i in ids]
        for i, found in zip(ids, ranker.rank(x, k, exclude, backend, block_mb, progress, f"search {split}")):
            if not found:
                raise DataError(f"{data}: item {i} of {split}: no sentence left to retrieve")
            items[i] = found
    return ranker, items


def retrieve(data: str, splits: Sequence[str], k: int = 20, feature_files: str = "features.h5",
             key_template: str = "{}", ridge: float = 1.0, train_split: str = "train",
             pooling: str = "mean", backend: str = "sparse", block_mb: float = 256,
             progress: Optional[bool] = False) -> Dict[str, List[str]]:
    """item id → top-k training sentences (``retrieve_with_ranker``; nothing written)."""
    return retrieve_with_ranker(data, splits, k, feature_files, key_template, ridge, train_split, pooling,
                                backend, block_mb, progress)[1]
