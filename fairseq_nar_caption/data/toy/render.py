"""Vectorised rendering of flat-coloured shapes on a lightly textured grey background.

Everything is numpy masks over pixel-centre coordinates: no anti-aliasing, no
per-pixel Python loops.  A shape is given by its centre ``(cx, cy)`` and its
"radius" ``r`` (half its extent), in pixels, y pointing down.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

# Well-separated colours (RGB); each contrasts with the grey background.
PALETTE = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 200),
    "white": (240, 240, 240),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")

PIXEL_NOISE = 4.0  # std of the Gaussian sensor noise added to every pixel
COLOUR_JITTER = 10  # max per-channel deviation of an object's colour from its palette entry


def _polygon(xx: np.ndarray, yy: np.ndarray, verts: Sequence[Tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test for every pixel centre."""
    xx, yy = np.broadcast_arrays(xx, yy)
    inside = np.zeros(xx.shape, dtype=bool)
    x0, y0 = verts[-1]
    for x1, y1 in verts:
        if y1 != y0:  # horizontal edges never cross a horizontal ray
            crosses = ((y1 > yy) != (y0 > yy)) & (xx < (x0 - x1) * (yy - y1) / (y0 - y1) + x1)
            inside ^= crosses
        x0, y0 = x1, y1
    return inside


# Star outline: 10 vertices alternating outer radius 1 and inner radius 0.45, point up.
_STAR = [((1.0 if k % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
          (1.0 if k % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
_TRIANGLE = [(0.0, -1.0), (0.95, 0.72), (-0.95, 0.72)]  # apex up


def _unit_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Mask of ``shape`` with radius 1 at the origin; ``dx, dy`` are offsets in radius units."""
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return (np.abs(dx) <= 0.82) & (np.abs(dy) <= 0.82)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.0
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= 1.0) & (ay <= 0.32)) | ((ay <= 1.0) & (ax <= 0.32))
    if shape == "triangle":
        return _polygon(dx, dy, _TRIANGLE)
    if shape == "star":
        return _polygon(dx, dy, _STAR)
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of a shape; parts outside the canvas are cut off."""
    mask = np.zeros((size, size), dtype=bool)
    # Only evaluate the shape's bounding window.
    x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 2)
    y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 2)
    if x0 >= x1 or y0 >= y1:
        return mask
    xs = (np.arange(x0, x1) + 0.5 - cx) / r
    ys = (np.arange(y0, y1) + 0.5 - cy) / r
    mask[y0:y1, x0:x1] = _unit_mask(shape, xs[None, :], ys[:, None])
    return mask


def mask_box(mask: np.ndarray) -> List[int]:
    """Tight box ``[x0, y0, x1, y1]`` of a non-empty mask, x1/y1 exclusive (pixel edges)."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey ``(size, size, 3)`` float background with a faint tint and a gentle wave texture."""
    level = rng.uniform(80, 120)
    tint = rng.uniform(-6, 6, size=3)
    amp, fx, fy, phase = rng.uniform(0, 8), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0, 2 * np.pi)
    coords = np.arange(size, dtype=np.float32)
    wave = amp * np.sin(fx * coords[None, :] + fy * coords[:, None] + phase)
    return (level + tint[None, None, :] + wave[:, :, None]).astype(np.float32)


def object_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    """The palette colour with a small per-object shade jitter."""
    return np.asarray(PALETTE[colour], dtype=np.float32) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)


def finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add sensor noise and quantise to uint8 pixels."""
    noisy = canvas + rng.normal(0.0, PIXEL_NOISE, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
