"""K frames per video: NACF's segment sampling over per-frame feature stores.

NACF's HDF5 files hold one (T, D) array per video, T varying with the video's
length (ResNet-101 frames at 5 fps, at most 60; 3D-ResNeXt clips).  The model sees
K = 8 vectors per modality, chosen as the reference ``dataloader.get_frame_ids``
does:

- ``[0, T)`` is cut into K segments at ``floor(linspace(0, T, K + 1))``;
- ``"centre"`` (evaluation) takes each segment's centre frame,
  ``(start + end) // 2``;
- ``"random"`` (training) takes a uniformly random frame inside each segment,
  drawn afresh for every ``get``;
- a video with T < K frames is resampled, ``round(i * (T - 1) / (K - 1))`` for
  ``i < K`` (frames repeat, in order) in both modes.  Nothing is zero-padded.

Random draws are reproducible without shared state: the n-th ``get`` of item
``x`` in epoch ``e`` in a process draws from ``SeedSequence([seed, e, crc32(x), n])``.
``set_epoch`` sets ``e`` and resets the per-item counters ``n``.  With
``num_workers=0`` a run is therefore reproducible whatever the batch order; with
dataloader workers each worker counts its own gets (fairseq assigns batches to
workers deterministically, so runs still repeat), and a worker that outlives an
epoch (persistent workers) keeps counting, so its draws still change.
"""
from __future__ import annotations

import zlib
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from .feature_store import FeatureStore
from ..errors import DataError

MODES = ("centre", "random")


def segment_frame_indices(num_total: int, num_frames: int,
                          rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Indices of ``num_frames`` frames out of ``num_total``: each segment's centre
    (``rng`` None) or a uniform draw inside each segment; resampled when
    ``num_total < num_frames``."""
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame to sample, got {num_total} of which to take {num_frames}")
    if num_total < num_frames:  # num_frames >= 2 here
        return np.round(np.arange(num_frames) * (num_total - 1) / (num_frames - 1)).astype(np.int64)
    bounds = np.linspace(0, num_total, num_frames + 1).astype(np.int64)
    if rng is None:
        return (bounds[:-1] + bounds[1:]) // 2
    return rng.integers(bounds[:-1], bounds[1:])


class FrameSampledStore(FeatureStore):
    """A ``FeatureStore`` of (T, D) frame features seen as (K, D), K = ``num_frames``.

    Presence, rank, feature dim and NaN/Inf checks are the wrapped store's (its
    messages name its file and the item); values are checked over all T frames,
    not only the sampled ones.  A video with no frame is an error.
    """

    def __init__(self, store: FeatureStore, num_frames: int = 8, mode: str = "centre", seed: int = 1):
        if mode not in MODES:
            raise ValueError(f"frame sampling mode must be one of {MODES}, got {mode!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.store, self.num_frames, self.mode, self.seed = store, num_frames, mode, seed
        self.epoch = 1
        self._draws: Dict[str, int] = {}

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def key_template(self) -> str:
        return self.store.key_template

    def set_epoch(self, epoch: int) -> None:
        """Random mode: draw from this epoch's streams, counting gets from zero."""
        self.epoch = epoch
        self._draws = {}

    def frame_indices(self, item_id: str, num_total: int) -> np.ndarray:
        """The frames the next ``get(item_id)`` of a ``num_total``-frame video takes
        (random mode: consumes one draw)."""
        if self.mode == "centre":
            return segment_frame_indices(num_total, self.num_frames)
        n = self._draws.get(item_id, 0)
        self._draws[item_id] = n + 1
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(item_id.encode("utf-8")), n])
        return segment_frame_indices(num_total, self.num_frames, rng)

    def shape(self, item_id: str) -> Tuple[int, int]:
        t, d = self.store.shape(item_id)
        if t == 0:
            raise DataError(f"{self.path}: item {item_id}: no frames (features shaped (0, {d}))")
        return self.num_frames, d

    def get(self, item_id: str) -> np.ndarray:
        self.shape(item_id)  # presence, rank and at least one frame, with the named error
        frames = self.store.get(item_id)
        return frames[self.frame_indices(item_id, len(frames))]

    def peek_shape(self) -> Tuple[int, int]:
        return self.num_frames, self.store.peek_shape()[1]

    def validate(self, item_ids: Iterable[str], dim: Optional[int] = None,
                 num_tokens: Optional[int] = None, max_tokens: Optional[int] = None,
                 check: str = "full") -> Tuple[int, int]:
        """The wrapped store's checks (presence, rank, equal D, NaN/Inf when
        ``check="full"``), at least one frame per item; returns (K, D).
        ``num_tokens``/``max_tokens`` apply to K."""
        item_ids = list(item_ids)
        _, d = self.store.validate(item_ids, dim=dim, check=check)
        for item_id in item_ids:
            self.shape(item_id)
        if num_tokens is not None and self.num_frames != num_tokens:
            raise DataError(f"{self.path}: {self.num_frames} frames sampled per item, expected {num_tokens}")
        if max_tokens is not None and self.num_frames > max_tokens:
            raise DataError(f"{self.path}: {self.num_frames} frames sampled per item, more than the "
                            f"{max_tokens} the model accepts (--max-source-positions)")
        return self.num_frames, d
