"""Feature stores: where pre-extracted visual features live.

Two layouts, the ones real releases use:

- ``HDF5FeatureStore``: one HDF5 file, one dataset per item, named by a key
  template (``"{}"`` → ``"123"``; ``"%d_features"`` → ``"123_features"`` as
  M2/PNAIC releases; ``"%d_grids"`` as SCD-Net/RDT; ``"video%s"`` ...).
- ``NpyFeatureStore``: a folder with one ``<key>.npy`` per item.

Both return float32 arrays shaped (N, D).  Nothing is ever substituted for a
missing or broken item (the NACF and RDT reference loaders return zeros or random
numbers): ``validate`` checks presence and shape of every id up front, and
(``check="full"``) scans values for NaN/Inf; ``get`` checks values of what it
reads in any case.  Every error names the file and the item.
"""
from __future__ import annotations

import atexit
import os
import weakref
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from .manifest import DataError


def format_key(template: str, item_id: str) -> str:
    """Apply a key template: ``str.format`` style (``"{}_grids"``) or printf style
    (``"%d_grids"``, ``"%s"``); ``%d`` requires an integer id."""
    if "%" in template:
        if "%d" in template:
            try:
                return template % int(item_id)
            except ValueError:
                raise DataError(f"key template {template!r} needs integer ids, got item {item_id!r}")
        return template % item_id
    return template.format(item_id)


class FeatureStore:
    path: str
    key_template: str

    def key(self, item_id: str) -> str:
        return format_key(self.key_template, item_id)

    # subclass API ------------------------------------------------------------
    def _shape(self, key: str) -> Optional[Tuple[int, ...]]:
        """Shape of the stored array, or None when the key is absent."""
        raise NotImplementedError

    def _read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def peek_shape(self) -> Tuple[int, int]:
        """(N, D) of some stored item: lets a task size its model before loading a split."""
        raise NotImplementedError

    # public API --------------------------------------------------------------
    def shape(self, item_id: str) -> Tuple[int, int]:
        shp = self._shape(self.key(item_id))
        if shp is None:
            raise DataError(f"{self.path}: item {item_id}: no features under key {self.key(item_id)!r}")
        if len(shp) != 2:
            raise DataError(f"{self.path}: item {item_id}: features shaped {shp}, expected 2-D (N, D)")
        return shp

    def get(self, item_id: str) -> np.ndarray:
        self.shape(item_id)  # presence and rank, with the named error
        arr = np.asarray(self._read(self.key(item_id)), dtype=np.float32)
        self._check_values(item_id, arr)
        return arr

    def _check_values(self, item_id: str, arr: np.ndarray) -> None:
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise DataError(f"{self.path}: item {item_id}: {bad} NaN/Inf value(s) in features")

    def validate(self, item_ids: Iterable[str], dim: Optional[int] = None,
                 num_tokens: Optional[int] = None, max_tokens: Optional[int] = None,
                 check: str = "full") -> Tuple[int, int]:
        """Check every id up front; return (N, D) of the first item.

        - every id present, 2-D;
        - D equal across items (and to ``dim`` when given);
        - N equal to ``num_tokens`` when given, at most ``max_tokens`` when given;
        - ``check="full"`` also reads every array and rejects NaN/Inf.
        """
        if check not in ("full", "lazy"):
            raise DataError(f"{self.path}: unknown feature check {check!r} (full|lazy)")
        first = None
        for item_id in item_ids:
            n, d = self.shape(item_id)
            if first is None:
                first = (n, d)
                if dim is not None and d != dim:
                    raise DataError(f"{self.path}: item {item_id}: feature dim {d}, expected {dim}")
            elif d != first[1]:
                raise DataError(f"{self.path}: item {item_id}: feature dim {d}, other items have {first[1]}")
            if num_tokens is not None and n != num_tokens:
                raise DataError(f"{self.path}: item {item_id}: {n} feature vectors, expected {num_tokens}")
            if max_tokens is not None and n > max_tokens:
                raise DataError(f"{self.path}: item {item_id}: {n} feature vectors, more than the "
                                f"{max_tokens} the model accepts (--max-source-positions)")
            if check == "full":
                self._check_values(item_id, np.asarray(self._read(self.key(item_id))))
        if first is None:
            raise DataError(f"{self.path}: no items to validate")
        return first


_OPEN_HDF5: "weakref.WeakSet[HDF5FeatureStore]" = weakref.WeakSet()


@atexit.register
def close_all_hdf5() -> None:
    """Close every HDF5 file a store opened, while the interpreter is still whole.

    Left to interpreter finalisation, h5py's object destructors (``PropID.__dealloc__``)
    can wait forever on h5py's global lock once other modules are torn down: a finished
    ``fairseq-train`` then hangs at exit with every thread in a futex wait (seen with
    h5py 3.16 / HDF5 2.0).  atexit runs before that teardown."""
    for store in list(_OPEN_HDF5):
        store.close()


class HDF5FeatureStore(FeatureStore):
    def __init__(self, path: str, key_template: str = "{}"):
        if not os.path.isfile(path):
            raise DataError(f"{path}: feature file not found")
        self.path, self.key_template = path, key_template
        self._h5 = None
        self._pid = None

    def _file(self):
        # h5py handles must not cross fork(): reopen in each dataloader worker.
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:  # truncated / not HDF5
                raise DataError(f"{self.path}: cannot be read as HDF5 ({e})") from None
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

    def _shape(self, key):
        f = self._file()
        if key not in f:
            return None
        return tuple(f[key].shape)

    def _read(self, key):
        return self._file()[key][()]

    def peek_shape(self):
        import h5py

        found = []
        self._file().visititems(lambda name, obj: found.append(obj.shape) or True
                                if isinstance(obj, h5py.Dataset) else None)
        if not found or len(found[0]) != 2:
            raise DataError(f"{self.path}: holds no 2-D feature dataset")
        return tuple(found[0])

    def __getstate__(self):  # picklable for dataloader workers
        state = dict(self.__dict__)
        state["_h5"] = None
        return state


class NpyFeatureStore(FeatureStore):
    def __init__(self, path: str, key_template: str = "{}"):
        if not os.path.isdir(path):
            raise DataError(f"{path}: feature folder not found")
        self.path, self.key_template = path, key_template

    def _file_of(self, key):
        return os.path.join(self.path, key + ".npy")

    def _shape(self, key):
        f = self._file_of(key)
        if not os.path.isfile(f):
            return None
        return tuple(np.load(f, mmap_mode="r").shape)

    def _read(self, key):
        return np.load(self._file_of(key))

    def peek_shape(self):
        names = sorted(f for f in os.listdir(self.path) if f.endswith(".npy"))
        if not names:
            raise DataError(f"{self.path}: folder holds no .npy features")
        shp = np.load(os.path.join(self.path, names[0]), mmap_mode="r").shape
        if len(shp) != 2:
            raise DataError(f"{self.path}: {names[0]} is shaped {shp}, expected 2-D (N, D)")
        return tuple(shp)


def open_feature_store(path: str, key_template: str = "{}") -> FeatureStore:
    """``*.h5``/``*.hdf5``/``*.hdf`` → HDF5 store; a folder → ``.npy`` store."""
    if os.path.isdir(path):
        return NpyFeatureStore(path, key_template)
    if path.endswith((".h5", ".hdf5", ".hdf")):
        return HDF5FeatureStore(path, key_template)
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
