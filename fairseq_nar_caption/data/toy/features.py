"""Stand-ins for frozen CNN features, computed from the rendered PIXELS only.

Every descriptor starts from the pixels relative to the item's background
colour (its per-channel median) and a soft foreground map (how far each pixel is
from that colour).  A fixed random ReLU layer (seeded with ``FEATURE_SEED``, the
same for every data seed, like a frozen pretrained backbone) sees the foreground
map of each grid cell; orientation histograms of the map's edges (HOG-like) and
cheap colour statistics are concatenated to it.

- images: ``(64, D)`` per image, one row per 12x12-pixel cell of the 8x8 grid
  (row-major from the top left);
- video appearance: ``(8, D)`` per clip, one frame descriptor per frame;
- video motion: ``(8, D)`` per clip, one descriptor of the change between
  consecutive frames (9 frames are rendered, so all 8 steps are real differences).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np

FEATURE_SEED = 20240611
IMAGE_GRID = 8  # 8x8 cells of 12x12 pixels on a 96x96 image
HOG_BINS = 8  # unsigned edge orientations, 22.5 degrees each
IMAGE_STATS = HOG_BINS + 3 * 3 + 1 + 2  # HOG, mean/std/foreground RGB, foreground share, cell coordinates
VIDEO_COARSE = 4  # 4x4 coarse cells of 16x16 pixels on a 64x64 frame
VIDEO_FINE = 8  # 8x8 fine cells of 8x8 pixels fed to the random layer
APPEARANCE_STATS = 4 * VIDEO_COARSE ** 2 + HOG_BINS  # coarse foreground colour and share, HOG
MOTION_STATS = 3 * VIDEO_COARSE ** 2 + 2 * VIDEO_COARSE ** 2  # coarse mean change, coarse optical flow
MIN_DIM = 96


def check_dim(dim: int) -> None:
    if dim < MIN_DIM or dim % 2:
        raise ValueError(f"feature dimension must be an even number >= {MIN_DIM}, got {dim}")


@lru_cache(maxsize=None)
def _random_layer(in_dim: int, out_dim: int, salt: int) -> Tuple[np.ndarray, np.ndarray]:
    """Fixed weights and biases of a random ReLU layer (outputs of order 1 on object pixels)."""
    rng = np.random.default_rng([FEATURE_SEED, salt, in_dim, out_dim])
    w = rng.standard_normal((in_dim, out_dim)).astype(np.float32) * np.float32(2.0 / np.sqrt(in_dim))
    b = rng.normal(0.0, 0.5, size=out_dim).astype(np.float32)
    return w, b


def _random_relu(x: np.ndarray, out_dim: int, salt: int) -> np.ndarray:
    w, b = _random_layer(x.shape[-1], out_dim, salt)
    return np.maximum(x @ w + b, 0.0)


def _cells(x: np.ndarray, grid: int) -> np.ndarray:
    """``(..., H, W, C)`` -> ``(..., grid*grid, cell_pixels*C)``, cells in row-major order."""
    *lead, h, w, c = x.shape
    ch, cw = h // grid, w // grid
    x = x.reshape(*lead, grid, ch, grid, cw, c)
    x = np.moveaxis(x, -4, -3)  # (..., grid, grid, ch, cw, c)
    return x.reshape(*lead, grid * grid, ch * cw * c)


def _prepare(pixels: np.ndarray, n_lead: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels in [0, 1], the same minus the item's background colour, and the foreground map.

    ``n_lead`` leading axes index items (and frames); the background colour is the
    per-channel median over each item's remaining pixel axes.  The foreground map
    ``(..., H, W, 1)`` rises from 0 to 1 as a pixel's colour distance to the
    background goes from noise level (0.08) to clearly an object (0.18).
    """
    x = pixels.astype(np.float32) / 255.0
    bg = np.median(x, axis=tuple(range(n_lead, x.ndim - 1)), keepdims=True)
    rel = x - bg
    fg = np.clip((np.sqrt((rel * rel).sum(axis=-1, keepdims=True)) - 0.08) / 0.1, 0.0, 1.0)
    return x, rel, fg


def _hog(fg: np.ndarray, grid: int) -> np.ndarray:
    """Per-cell histogram of the foreground map's edge orientations: ``(..., grid*grid, HOG_BINS)``."""
    gx = np.gradient(fg[..., 0], axis=-1)
    gy = np.gradient(fg[..., 0], axis=-2)
    magnitude = np.hypot(gx, gy)
    bins = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) * (HOG_BINS / np.pi)).astype(np.int64), HOG_BINS - 1)
    return np.stack([_cells((magnitude * (bins == k))[..., None], grid).sum(axis=-1) for k in range(HOG_BINS)], -1)


def _foreground_colour(x: np.ndarray, fg: np.ndarray, grid: int) -> np.ndarray:
    """Per-cell mean colour of the foreground pixels, in [-1, 1]; shrinks to 0 without foreground.

    ``x``: ``(..., H, W, 3)`` pixels in [0, 1], ``fg``: ``(..., H, W, 1)`` -> ``(..., grid*grid, 3)``.
    """
    weights = _cells(fg, grid)[..., None]  # (..., cells, pixels, 1)
    colour = _cells(x, grid).reshape(*weights.shape[:-1], 3)
    return ((colour - 0.5) * 2.0 * weights).sum(axis=-2) / (weights.sum(axis=-2) + 1.0)


def image_features(pixels: np.ndarray, dim: int) -> np.ndarray:
    """``(B, 96, 96, 3)`` uint8 images -> ``(B, 64, dim)`` float32 grid features."""
    check_dim(dim)
    x, _, fg = _prepare(pixels, 1)
    b, n_cells = x.shape[0], IMAGE_GRID ** 2
    fg_cells = _cells(fg, IMAGE_GRID)  # (B, 64, 144)
    colour = _cells(x, IMAGE_GRID).reshape(b, n_cells, -1, 3)  # (B, 64, 144, 3)
    rows, cols = np.divmod(np.arange(n_cells), IMAGE_GRID)
    coords = np.stack([rows, cols], axis=-1) / (IMAGE_GRID - 1) * 2.0 - 1.0
    return np.concatenate([
        _random_relu(fg_cells, dim - IMAGE_STATS, salt=0),
        _hog(fg, IMAGE_GRID) / 4.0,
        (colour.mean(axis=2) - 0.5) * 2.0,
        colour.std(axis=2) * 4.0,
        _foreground_colour(x, fg, IMAGE_GRID),
        fg_cells.mean(axis=-1, keepdims=True),
        np.broadcast_to(coords, (b, n_cells, 2)),
    ], axis=-1).astype(np.float32)


def _box_blur(x: np.ndarray) -> np.ndarray:
    """3x3 box blur over the two spatial axes (-3, -2), edges replicated."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="edge")
    h, w = x.shape[-3], x.shape[-2]
    return sum(p[..., i:i + h, j:j + w, :] for i in range(3) for j in range(3)) / 9.0


def _coarse_flow(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Lucas-Kanade flow (vx, vy) per coarse cell between frames: ``(..., 16, 2)`` in pixels/step."""
    prev, cur = _box_blur(prev), _box_blur(cur)
    mid = (prev + cur) / 2.0
    ix = np.gradient(mid, axis=-2)
    iy = np.gradient(mid, axis=-3)
    it = cur - prev

    def cell_sum(v: np.ndarray) -> np.ndarray:
        return _cells(v, VIDEO_COARSE).sum(axis=-1)

    sxx, syy, sxy = cell_sum(ix * ix) + 1.0, cell_sum(iy * iy) + 1.0, cell_sum(ix * iy)  # +1: ridge for flat cells
    sxt, syt = cell_sum(ix * it), cell_sum(iy * it)
    det = sxx * syy - sxy * sxy
    vx = -(syy * sxt - sxy * syt) / det
    vy = -(sxx * syt - sxy * sxt) / det
    return np.clip(np.stack([vx, vy], axis=-1), -8.0, 8.0)


def video_features(frames: np.ndarray, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(B, 9, 64, 64, 3)`` uint8 clips -> appearance and motion, each ``(B, 8, dim)`` float32.

    Appearance row t describes frame t+1; motion row t the change from frame t to t+1.
    Spatial pooling (mean and max over cells) keeps the frame descriptors compact;
    the coarse 4x4 maps keep where things are.
    """
    check_dim(dim)
    x, rel, fg = _prepare(frames, 2)
    b, steps = frames.shape[0], frames.shape[1] - 1
    n_coarse = VIDEO_COARSE ** 2

    def coarse_mean(v: np.ndarray) -> np.ndarray:  # (B, 8, 64, 64, C) -> (B, 8, 16 * C)
        return _cells(v, VIDEO_COARSE).reshape(b, steps, n_coarse, -1, v.shape[-1]).mean(axis=3).reshape(b, steps, -1)

    def pooled_random(v: np.ndarray, salt: int, width: int) -> np.ndarray:
        fine = _random_relu(_cells(v, VIDEO_FINE), width, salt)  # (B, 8, 64, width)
        return np.concatenate([fine.mean(axis=2) * 4.0, fine.max(axis=2)], axis=-1)

    cur, fg_cur = rel[:, 1:], fg[:, 1:]
    appearance = np.concatenate([
        _foreground_colour(x[:, 1:], fg_cur, VIDEO_COARSE).reshape(b, steps, -1),
        coarse_mean(fg_cur) * 2.0,
        _hog(fg_cur, 1)[:, :, 0] / 16.0,
        pooled_random(fg_cur, 1, (dim - APPEARANCE_STATS) // 2),
    ], axis=-1)
    motion = np.concatenate([
        coarse_mean(cur - rel[:, :-1]) * 8.0,
        _coarse_flow(rel[:, :-1], cur).reshape(b, steps, -1) / 2.0,
        pooled_random(fg_cur - fg[:, :-1], 2, (dim - MOTION_STATS) // 2),
    ], axis=-1)
    return appearance.astype(np.float32), motion.astype(np.float32)
