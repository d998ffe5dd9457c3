"""Scene sampling and rendering for the toy images (96x96) and video clips (64x64).

A scene is a list of objects in drawing order (later objects are drawn on top).
All randomness comes from the ``numpy.random.Generator`` passed in, so a scene is
a deterministic function of its generator's seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from . import render

# --------------------------------------------------------------------------- images
IMAGE_SIZE = 96
IMAGE_RADIUS = {"small": 9.0, "medium": 14.0, "large": 20.0}
_CELL_CENTRES = (22.0, 48.0, 74.0)  # centres of a 3x3 layout grid
_CELL_JITTER = 4.0
P_OVERLAP = 0.12  # share of multi-object images whose first two objects overlap

# Bounding-circle factor: every shape of radius r lies within 1.17 r of its centre
# (the square's corners are the farthest points).
_BOUND = 1.17

ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
# Spatial relations (and VQA left/right questions) need this clear margin in pixels
# of a 96-pixel canvas; it scales with the canvas size.
RELATION_MARGIN = 10.0


def region(cx: float, cy: float, size: int) -> Tuple[str, str]:
    """(row, column) of a point in the canvas' 3x3 layout, e.g. ("top", "left")."""
    def third(v: float) -> int:
        return 0 if v < size * 3 / 8 else 2 if v > size * 5 / 8 else 1
    return ROWS[third(cy)], COLUMNS[third(cx)]


def relations(a, b, size: int) -> List[str]:
    """Relations of object ``a`` to object ``b`` that clearly hold: left/right/above/below."""
    margin = RELATION_MARGIN * size / IMAGE_SIZE
    dx, dy = b.cx - a.cx, b.cy - a.cy
    rels = []
    if dx > margin:
        rels.append("left")
    if dx < -margin:
        rels.append("right")
    if dy > margin:
        rels.append("above")
    if dy < -margin:
        rels.append("below")
    return rels


def _pick_identities(rng: np.random.Generator, n: int) -> List[Tuple[str, str]]:
    """``n`` distinct (shape, colour) pairs, so "the <colour> <shape>" is always unique."""
    pairs = [(s, c) for s in render.SHAPES for c in render.COLOURS]
    return [pairs[i] for i in rng.choice(len(pairs), size=n, replace=False)]


@dataclass
class ImageObject:
    shape: str
    colour: str
    size: str  # small / medium / large
    cx: float
    cy: float
    r: float
    box: Optional[List[int]] = None  # [x0, y0, x1, y1], pixels, x1/y1 exclusive
    occluded: bool = False  # partly covered by an object drawn later

    @property
    def region(self) -> Tuple[str, str]:
        return region(self.cx, self.cy, IMAGE_SIZE)

    def to_json(self) -> dict:
        row, col = self.region
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "box": self.box,
                "occluded": self.occluded, "position": f"{row} {col}"}


def _clamp_centre(v: float, r: float, size: int) -> float:
    return float(min(max(v, r + 1.0), size - r - 1.0))


def _far_apart(objs, gap: float = 3.0) -> bool:
    """No two bounding circles come within ``gap`` pixels (anything with cx, cy, r)."""
    for i in range(len(objs)):
        for j in range(i):
            a, b = objs[i], objs[j]
            if math.hypot(a.cx - b.cx, a.cy - b.cy) < _BOUND * (a.r + b.r) + gap:
                return False
    return True


def sample_image_scene(rng: np.random.Generator) -> List[ImageObject]:
    """1-3 objects in distinct cells of a 3x3 layout; a few scenes with two overlapping objects."""
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    identities = _pick_identities(rng, n)
    overlap = n >= 2 and rng.random() < P_OVERLAP
    for _ in range(1000):
        sizes = rng.choice(list(IMAGE_RADIUS), size=n)
        cells = rng.permutation(9)[:n]
        objs = []
        for (shape, colour), size, cell in zip(identities, sizes, cells):
            r = IMAGE_RADIUS[size] + rng.uniform(-1.0, 1.0)
            cx = _clamp_centre(_CELL_CENTRES[cell % 3] + rng.uniform(-_CELL_JITTER, _CELL_JITTER), r, IMAGE_SIZE)
            cy = _clamp_centre(_CELL_CENTRES[cell // 3] + rng.uniform(-_CELL_JITTER, _CELL_JITTER), r, IMAGE_SIZE)
            objs.append(ImageObject(shape, colour, str(size), cx, cy, r))
        if overlap:
            # Move the second object onto the first: it is drawn later, so it hides part of it.
            a, b = objs[0], objs[1]
            d, theta = rng.uniform(0.5, 0.85) * (a.r + b.r), rng.uniform(0, 2 * math.pi)
            b.cx = _clamp_centre(a.cx + d * math.cos(theta), b.r, IMAGE_SIZE)
            b.cy = _clamp_centre(a.cy + d * math.sin(theta), b.r, IMAGE_SIZE)
            if _far_apart([a, b], gap=0.0) or not _far_apart(objs[1:]) or not _far_apart([a] + objs[2:]):
                continue
        elif not _far_apart(objs):
            continue
        if _annotate_image_objects(objs, overlap):
            return objs
    raise RuntimeError("could not place the objects of a toy image")


def _annotate_image_objects(objs: List[ImageObject], overlap: bool) -> bool:
    """Set boxes and occlusion flags from the masks; False if an overlap hides too much."""
    masks = [render.shape_mask(o.shape, o.cx, o.cy, o.r, IMAGE_SIZE) for o in objs]
    for i, (o, m) in enumerate(zip(objs, masks)):
        covered = np.zeros_like(m)
        for later in masks[i + 1:]:
            covered |= later
        visible = int((m & ~covered).sum())
        if overlap and visible < 0.4 * m.sum():  # keep occluded objects recognisable
            return False
        o.box = render.mask_box(m)
        o.occluded = bool(visible < m.sum())
    return not overlap or objs[0].occluded


def render_image(objs: List[ImageObject], rng: np.random.Generator) -> np.ndarray:
    """``(96, 96, 3)`` uint8 pixels of an image scene."""
    canvas = render.background(rng, IMAGE_SIZE)
    for o in objs:
        canvas[render.shape_mask(o.shape, o.cx, o.cy, o.r, IMAGE_SIZE)] = render.object_colour(rng, o.colour)
    return render.finish(canvas, rng)


# --------------------------------------------------------------------------- videos
VIDEO_SIZE = 64
N_RENDERED = 9  # frames rendered; features use frames 1..8 and the 8 differences between them
VIDEO_RADIUS = {"small": 6.0, "large": 10.5}
GROW_RADII = (5.0, 12.0)  # radius at the first and last rendered frame of "grow" ("shrink" reversed)
MOVE_DISTANCE = (26.0, 30.0)  # pixels travelled over the clip
MOVES = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
EVENTS = tuple(MOVES) + ("grow", "shrink", "appear", "disappear", "turn", "still")
# Event distribution of a clip's main object; a second object stays still half of the time.
_EVENT_P = (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.05)


@dataclass
class FrameState:
    cx: float
    cy: float
    r: float
    colour: str
    visible: bool


@dataclass
class VideoObject:
    shape: str
    colour: str  # colour at the start
    size: str  # size word at the start: small / large
    event: str  # one of EVENTS
    track: List[FrameState]  # one state per rendered frame
    change_frame: Optional[int] = None  # appear/disappear/turn: first feature row (0-7) showing it
    new_colour: Optional[str] = None  # turn: colour after the change

    def to_json(self) -> dict:
        boxes = []
        for s in self.track[1:]:
            m = render.shape_mask(self.shape, s.cx, s.cy, s.r, VIDEO_SIZE) if s.visible else None
            boxes.append(render.mask_box(m) if m is not None and m.any() else None)
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "event": self.event,
                "change_frame": self.change_frame, "new_colour": self.new_colour, "boxes": boxes}


def _sample_video_object(rng: np.random.Generator, shape: str, colour: str, event: str,
                         taken: List[Tuple[str, str]]) -> VideoObject:
    """One object performing ``event``; its whole track stays inside the frame."""
    t = np.linspace(0.0, 1.0, N_RENDERED)
    size = "small" if event == "grow" else "large" if event == "shrink" else str(rng.choice(list(VIDEO_RADIUS)))
    radii = np.full(N_RENDERED, VIDEO_RADIUS[size])
    if event in ("grow", "shrink"):
        lo, hi = GROW_RADII if event == "grow" else GROW_RADII[::-1]
        radii = lo + (hi - lo) * t
    rmax = float(radii.max())
    lo_c, hi_c = rmax + 1.0, VIDEO_SIZE - rmax - 1.0
    cx = np.full(N_RENDERED, rng.uniform(lo_c, hi_c))
    cy = np.full(N_RENDERED, rng.uniform(lo_c, hi_c))
    if event in MOVES:
        ux, uy = MOVES[event]
        dist = rng.uniform(*MOVE_DISTANCE)
        # Start far enough from the side the object moves towards.
        start = rng.uniform(lo_c + dist, hi_c) if (ux or uy) < 0 else rng.uniform(lo_c, hi_c - dist)
        path = start + (ux or uy) * dist * t
        if ux:
            cx = path
        else:
            cy = path
    colours = [colour] * N_RENDERED
    visible = [True] * N_RENDERED
    change_frame = new_colour = None
    if event in ("appear", "disappear", "turn"):
        k = int(rng.integers(2, 7))  # first rendered frame after the change
        change_frame = k - 1
        if event == "turn":
            new_colour = str(rng.choice([c for c in render.COLOURS if c != colour and (shape, c) not in taken]))
            colours = [colour] * k + [new_colour] * (N_RENDERED - k)
        else:
            visible = [(i >= k) == (event == "appear") for i in range(N_RENDERED)]
    track = [FrameState(float(x), float(y), float(r), c, v) for x, y, r, c, v in zip(cx, cy, radii, colours, visible)]
    return VideoObject(shape, colour, size, event, track, change_frame, new_colour)


def sample_video_scene(rng: np.random.Generator) -> List[VideoObject]:
    """One or two objects; the first always does something, the second often stays still."""
    n = int(rng.choice([1, 2]))
    identities = _pick_identities(rng, n)
    events = [str(rng.choice(EVENTS, p=_EVENT_P))]
    if n == 2:
        events.append("still" if rng.random() < 0.5 else str(rng.choice(EVENTS, p=_EVENT_P)))
    for _ in range(1000):
        objs = []
        for (shape, colour), event in zip(identities, events):
            objs.append(_sample_video_object(rng, shape, colour, event, identities))
        if n == 1 or all(_far_apart([a, b]) for a, b in zip(objs[0].track, objs[1].track)):
            return objs
    raise RuntimeError("could not place the objects of a toy clip")


def render_video(objs: List[VideoObject], rng: np.random.Generator) -> np.ndarray:
    """``(9, 64, 64, 3)`` uint8 frames of a clip (static background, fresh noise per frame)."""
    bg = render.background(rng, VIDEO_SIZE)
    # One shade per object and colour, kept over the clip.
    shades = [{c: render.object_colour(rng, c) for c in dict.fromkeys(s.colour for s in o.track)} for o in objs]
    frames = []
    for t in range(N_RENDERED):
        canvas = bg.copy()
        for o, shade in zip(objs, shades):
            s = o.track[t]
            if s.visible:
                canvas[render.shape_mask(o.shape, s.cx, s.cy, s.r, VIDEO_SIZE)] = shade[s.colour]
        frames.append(render.finish(canvas, rng))
    return np.stack(frames)
