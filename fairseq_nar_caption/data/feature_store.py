"""Feature stores: where pre-extracted visual features live.

Two layouts, the ones real releases use:

- ``HDF5FeatureStore``: one HDF5 file, one dataset per item, named by a key
  template (``"{}"`` → ``"123"``; ``"%d_features"`` → ``"123_features"`` as
  M2/PNAIC releases; ``"%d_grids"`` as SCD-Net/RDT; ``"video%s"`` ...).
- ``NpyFeatureStore``: a folder with one ``<key>.npy`` per item.

Both return float32 arrays shaped (N, D).  Nothing is ever substituted for a
missing or broken item (the NACF and RDT reference loaders return zeros or random
numbers): ``validate`` checks presence, shape and at least one vector of every id up
front, and (``check="full"``) scans values for NaN/Inf and for finite values beyond
``max_abs`` (``--feature-max-abs``, default 1e4: corrupt or unnormalised features that
would overflow inside the model); ``get`` checks values of what it reads in any case.
The feature dim expected of every item is the model's when given, else the one most
items share (``majority_shape``; ``peek_shape`` too), so an odd item is named even when
it is the file's first key.  Key templates need exactly one placeholder
(``check_key_template``).  A truncated file or array is one error naming it.  Every
error names the file and the item.  At exit, fairseq's batch-prefetching threads are
stopped and every open HDF5 file closed before the interpreter tears down
(``close_all_hdf5``): a prefetch thread killed mid-read would hang or abort the process.
"""
from __future__ import annotations

import atexit
import os
import queue
import sys
import threading
import time
import weakref
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError


def format_key(template: str, item_id: str) -> str:
    """Apply a key template: ``str.format`` style (``"{}_grids"``) or printf style
    (``"%d_grids"``, ``"%s"``); ``%d`` requires an integer id."""
    if "%" in template:
        if "%d" in template:
            try:
                return template % int(item_id)
            except ValueError:
                raise DataError(f"key template {template!r} needs integer ids, got item {item_id!r}")
            except TypeError as e:
                raise DataError(f"--feature-key-template {template!r}: {e} (use one %d or %s, e.g. '%d_grids')")
        try:
            return template % item_id
        except TypeError as e:
            raise DataError(f"--feature-key-template {template!r}: {e} (use one %d or %s, e.g. '%d_grids')")
    try:
        return template.format(item_id)
    except (IndexError, KeyError, ValueError) as e:
        raise DataError(f"--feature-key-template {template!r}: not a template with one '{{}}' for the item id "
                        f"({type(e).__name__}: {e}); e.g. '{{}}', '{{}}_features', '%d_grids'") from None


def check_key_template(template: str) -> str:
    """``template`` if it maps an id to a key with exactly one placeholder, else one DataError."""
    import string

    if "%" in template:
        n = template.count("%d") + template.count("%s")
        if n != 1 or template.count("%") != 1:
            raise DataError(f"--feature-key-template {template!r}: needs exactly one %d or %s (e.g. '%d_grids')")
        return template
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise DataError(f"--feature-key-template {template!r}: {e}") from None
    if fields != [""]:
        raise DataError(f"--feature-key-template {template!r}: needs exactly one '{{}}' for the item id "
                        f"(e.g. '{{}}', '{{}}_features'), found {len(fields)} field(s)")
    return template


DEFAULT_MAX_ABS = 1e4


def check_feature_dtype(dtype, where: str) -> None:
    """Features are floating-point numbers: integers (ids, pixels, quantised codes) or other dtypes
    are refused, never cast (one rule for stores and for arrays handed to the hub)."""
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise DataError(f"{where}: dtype {np.dtype(dtype)}, expected floating-point features (integer or other "
                        f"values would be cast silently; store the features as float32)")


def check_feature_values(arr, where: str, max_abs: Optional[float] = DEFAULT_MAX_ABS) -> None:
    """One DataError naming ``where`` for non-numeric, NaN/Inf, or (beyond ``max_abs``) absurd values
    (the load-time check of the stores; the hub applies it to arrays it is handed)."""
    arr = np.asarray(arr)
    check_feature_dtype(arr.dtype, where)
    finite = np.isfinite(arr)
    if not finite.all():
        raise DataError(f"{where}: {int((~finite).sum())} NaN/Inf value(s) in features")
    if max_abs is not None and arr.size:
        peak = float(np.abs(arr).max())
        if peak > max_abs:
            raise DataError(f"{where}: feature value {peak:.3g} exceeds the bound {max_abs:.3g} "
                            f"(--feature-max-abs; raise it if such values are real)")


def majority_shape(shapes: Sequence[Tuple[int, ...]]) -> Tuple[int, int]:
    """The (N, D) most items share: the most common D, then the most common N among those items
    (one odd item, even the first, cannot set what the others are compared with)."""
    from collections import Counter

    dims = Counter(s[1] for s in shapes)
    d = dims.most_common(1)[0][0]
    n = Counter(s[0] for s in shapes if s[1] == d).most_common(1)[0][0]
    return n, d


class FeatureStore:
    path: str
    key_template: str
    max_abs: float = DEFAULT_MAX_ABS  # --feature-max-abs: finite values beyond this are refused

    def key(self, item_id: str) -> str:
        return format_key(self.key_template, item_id)

    # subclass API ------------------------------------------------------------
    def _shape(self, key: str) -> Optional[Tuple[int, ...]]:
        """Shape of the stored array, or None when the key is absent (a key that holds something
        other than an array, e.g. an HDF5 group, is a DataError naming it)."""
        raise NotImplementedError

    def _dtype(self, key: str):
        """dtype of the stored array (read from its header, not its values)."""
        raise NotImplementedError

    def _read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def _all_shapes(self) -> List[Tuple[int, ...]]:
        """Shapes of the stored 2-D arrays (every one, or a large sample)."""
        raise NotImplementedError

    def peek_shape(self) -> Tuple[int, int]:
        """(N, D) most stored items have (``majority_shape``): lets a task size its model before
        loading a split, without trusting whichever item happens to come first."""
        shapes = [s for s in self._all_shapes() if len(s) == 2]
        if not shapes:
            raise DataError(f"{self.path}: holds no 2-D (N, D) feature array")
        return majority_shape(shapes)

    # public API --------------------------------------------------------------
    def shape(self, item_id: str) -> Tuple[int, int]:
        shp = self._shape(self.key(item_id))
        if shp is None:
            raise DataError(f"{self.path}: item {item_id}: no features under key {self.key(item_id)!r}")
        if len(shp) != 2:
            raise DataError(f"{self.path}: item {item_id}: features shaped {shp}, expected 2-D (N, D)")
        if shp[0] == 0 or shp[1] == 0:
            raise DataError(f"{self.path}: item {item_id}: no frames or feature vectors (features shaped {shp}); "
                            f"every item needs at least one")
        check_feature_dtype(self._dtype(self.key(item_id)), f"{self.path}: item {item_id}")
        return shp

    def get(self, item_id: str) -> np.ndarray:
        self.shape(item_id)  # presence, rank and size, with the named error
        arr = self._read_checked(item_id)
        self._check_values(item_id, arr)
        return np.asarray(arr, dtype=np.float32)

    def _read_checked(self, item_id: str) -> np.ndarray:
        try:
            return self._read(self.key(item_id))
        except DataError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # h5py / numpy: corrupt data
            raise DataError(f"{self.path}: item {item_id}: cannot read the features under key "
                            f"{self.key(item_id)!r} ({type(e).__name__}: {e}); the file may be truncated") from None

    def _check_values(self, item_id: str, arr: np.ndarray) -> None:
        check_feature_values(arr, f"{self.path}: item {item_id}", self.max_abs)

    def validate(self, item_ids: Iterable[str], dim: Optional[int] = None,
                 num_tokens: Optional[int] = None, max_tokens: Optional[int] = None,
                 check: str = "full") -> Tuple[int, int]:
        """Check every id up front; return (N, D) most items have.

        - every id present, 2-D, at least one vector;
        - D equal across items: to ``dim`` when given (the model's), else to the D most items
          have (so the error names the odd item even when it comes first);
        - N equal to ``num_tokens`` when given, at most ``max_tokens`` when given;
        - ``check="full"`` also reads every array and rejects NaN/Inf and values beyond
          ``max_abs`` (``--feature-max-abs``).
        """
        if check not in ("full", "lazy"):
            raise DataError(f"{self.path}: unknown feature check {check!r} (full|lazy)")
        shapes = {item_id: self.shape(item_id) for item_id in item_ids}
        if not shapes:
            raise DataError(f"{self.path}: no items to validate")
        majority = majority_shape(list(shapes.values()))
        expected = dim if dim is not None else majority[1]
        for item_id, (n, d) in shapes.items():
            if d != expected:
                if dim is not None:
                    raise DataError(f"{self.path}: item {item_id}: feature dim {d}, expected {dim}")
                k = sum(s[1] == expected for s in shapes.values())
                raise DataError(f"{self.path}: item {item_id}: feature dim {d}, other items have {expected} "
                                f"({k} of {len(shapes)})")
            if num_tokens is not None and n != num_tokens:
                raise DataError(f"{self.path}: item {item_id}: {n} feature vectors, expected {num_tokens}")
            if max_tokens is not None and n > max_tokens:
                raise DataError(f"{self.path}: item {item_id}: {n} feature vectors, more than the "
                                f"{max_tokens} the model accepts (--max-source-positions)")
        if check == "full":
            for item_id in shapes:
                self._check_values(item_id, self._read_checked(item_id))
        return majority if dim is None else (majority[0], dim)


_OPEN_HDF5: "weakref.WeakSet[HDF5FeatureStore]" = weakref.WeakSet()


def stop_background_loaders(timeout: float = 30.0) -> None:
    """Stop fairseq's batch-prefetching threads before the interpreter finalises.

    fairseq wraps every epoch's batches in ``BufferedIterator`` (``--data-buffer-size``, 10 by
    default), whose daemon ``BackgroundConsumer`` thread loads batches ahead, through our
    datasets.  Still running at exit, the thread is killed mid-batch when finalisation starts:
    inside an HDF5 read it takes h5py's global lock with it and the main thread then waits forever
    for that lock in an h5py destructor; inside torch's C++ code the kill aborts the process
    (``terminate called without an active exception``, exit -6 after a finished run).

    Each live consumer is told to stop after the batch it is loading (its ``run`` breaks once
    ``count >= _max_len``) and its queue is drained so that the last ``put`` cannot block; one
    that has not ended after ``timeout`` seconds is left as it is."""
    iterators = sys.modules.get("fairseq.data.iterators")
    consumer_type = getattr(iterators, "BackgroundConsumer", None)
    if consumer_type is None:
        return
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if not isinstance(thread, consumer_type) or not thread.is_alive():
            continue
        thread._max_len = 0
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    thread._queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


@atexit.register
def close_all_hdf5() -> None:
    """Close every HDF5 file a store opened, while the interpreter is still whole, after
    stopping the threads that may be reading them (``stop_background_loaders``).

    Left to interpreter finalisation, h5py's object destructors take h5py's global lock; a
    prefetch thread killed while holding it leaves a finished ``fairseq-train`` hanging at exit
    (main thread in ``h5py._objects.ObjectID.__dealloc__``, waiting on that lock).  atexit runs
    before that teardown."""
    stop_background_loaders()
    for store in list(_OPEN_HDF5):
        store.close()


class HDF5FeatureStore(FeatureStore):
    def __init__(self, path: str, key_template: str = "{}", max_abs: Optional[float] = DEFAULT_MAX_ABS):
        if not os.path.isfile(path):
            raise DataError(f"{path}: feature file not found")
        self.path, self.key_template, self.max_abs = path, check_key_template(key_template), max_abs
        self._h5 = None
        self._pid = None

    def _file(self):
        # h5py handles must not cross fork(): reopen in each dataloader worker.
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:  # truncated / not HDF5
                raise DataError(f"{self.path}: cannot be read as HDF5, truncated or not an HDF5 file ({e})") from None
            self._pid = os.getpid()
            _OPEN_HDF5.add(self)
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            try:
                self._h5.close()
            except Exception:  # already closed by h5py itself
                pass
        self._h5 = None
        _OPEN_HDF5.discard(self)

    def _dataset(self, key):
        """The HDF5 dataset under ``key``, or None when absent."""
        import h5py

        f = self._file()
        try:
            if key not in f:
                return None
            obj = f[key]
        except (OSError, KeyError, RuntimeError) as e:
            raise DataError(f"{self.path}: key {key!r}: cannot be read ({type(e).__name__}: {e}); "
                            f"the file may be truncated") from None
        if not isinstance(obj, h5py.Dataset):
            kind = "an HDF5 group" if isinstance(obj, h5py.Group) else type(obj).__name__
            raise DataError(f"{self.path}: key {key!r} is {kind}, not a dataset of features (a group's "
                            f"datasets are reached with --feature-key-template, e.g. '{key}/{{}}')")
        return obj

    def _shape(self, key):
        ds = self._dataset(key)
        return None if ds is None else tuple(ds.shape)

    def _dtype(self, key):
        return self._dataset(key).dtype

    def _read(self, key):
        return self._dataset(key)[()]

    def _all_shapes(self):
        import h5py

        found = []
        self._file().visititems(lambda name, obj: found.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
        return found

    def __getstate__(self):  # picklable for dataloader workers
        state = dict(self.__dict__)
        state["_h5"] = None
        return state


class NpyFeatureStore(FeatureStore):
    SHAPE_SAMPLE = 2000  # peek_shape: the majority over the first files (sorted), not all of a huge folder

    def __init__(self, path: str, key_template: str = "{}", max_abs: Optional[float] = DEFAULT_MAX_ABS):
        if not os.path.isdir(path):
            raise DataError(f"{path}: feature folder not found")
        self.path, self.key_template, self.max_abs = path, check_key_template(key_template), max_abs

    def _file_of(self, key):
        return os.path.join(self.path, key + ".npy")

    def _load(self, f, mmap_mode=None):
        try:
            return np.load(f, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{f}: not a readable .npy array ({type(e).__name__}: {e}); truncated?") from None

    def _shape(self, key):
        f = self._file_of(key)
        if not os.path.isfile(f):
            return None
        return tuple(self._load(f, mmap_mode="r").shape)

    def _dtype(self, key):
        return self._load(self._file_of(key), mmap_mode="r").dtype

    def _read(self, key):
        return self._load(self._file_of(key))

    def _all_shapes(self):
        names = sorted(f for f in os.listdir(self.path) if f.endswith(".npy"))
        if not names:
            raise DataError(f"{self.path}: folder holds no .npy features")
        return [self._load(os.path.join(self.path, n), mmap_mode="r").shape for n in names[: self.SHAPE_SAMPLE]]


def open_feature_store(path: str, key_template: str = "{}",
                       max_abs: Optional[float] = DEFAULT_MAX_ABS) -> FeatureStore:
    """``*.h5``/``*.hdf5``/``*.hdf`` → HDF5 store; a folder → ``.npy`` store.  ``max_abs``
    (``--feature-max-abs``): finite feature values beyond it are refused as corrupt; None: no bound."""
    if os.path.isdir(path):
        return NpyFeatureStore(path, key_template, max_abs)
    if path.endswith((".h5", ".hdf5", ".hdf")):
        return HDF5FeatureStore(path, key_template, max_abs)
    raise DataError(f"{path}: not a feature store (expected an .h5/.hdf5 file or a folder of .npy)")


class MultiModalFeatures:
    """Several stores (e.g. appearance + motion), concatenated along time.

    ``get(id)`` returns (sum_m N_m, D); all modalities must share D.  The token
    counts per modality are in ``tokens_per_modality`` after ``validate``.
    """

    def __init__(self, stores: Sequence[FeatureStore]):
        if not stores:
            raise DataError("no feature store given")
        self.stores = list(stores)
        self.tokens_per_modality: Optional[list] = None
        self.dim: Optional[int] = None

    def validate(self, item_ids, dim=None, max_tokens=None, check="full"):
        item_ids = list(item_ids)
        shapes = [s.validate(item_ids, dim=dim, check=check) for s in self.stores]
        dims = {d for _, d in shapes}
        if len(dims) != 1:
            raise DataError("feature stores disagree on the feature dim: "
                            + ", ".join(f"{s.path}: {d}" for s, (_, d) in zip(self.stores, shapes)))
        self.dim = dims.pop()
        self.tokens_per_modality = [n for n, _ in shapes]
        if max_tokens is not None:
            for item_id in item_ids:
                n = sum(s.shape(item_id)[0] for s in self.stores)
                if n > max_tokens:
                    raise DataError(f"{', '.join(s.path for s in self.stores)}: item {item_id}: {n} feature "
                                    f"vectors, more than the {max_tokens} the model accepts (--max-source-positions)")
        return self.tokens_per_modality, self.dim

    def get(self, item_id: str) -> np.ndarray:
        arrs = [s.get(item_id) for s in self.stores]
        return arrs[0] if len(arrs) == 1 else np.concatenate(arrs, axis=0)
