"""The speed–quality chart of a benchmark run: CIDEr-D against batch-1 latency and, when
every row has one, against throughput at a large batch (a second panel).

One point per row (log speed axis), the Pareto front of each panel (no other row is both
faster and better) drawn as a step line, the machine and date in the caption.  Labels are
placed by ``place_labels`` so that clustered rows stay readable.  ``chart_points`` gives
exactly what is plotted; the benchmark JSON stores it, and the PNG carries the same list
in its metadata (``Points``), so a reader (and the tests) can check one against the other.
"""
import json
import logging
import math
from typing import Dict, List, Optional

for _name in ("matplotlib", "PIL"):  # font-matching chatter when the root logger is at DEBUG (fairseq)
    logging.getLogger(_name).setLevel(logging.WARNING)

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox, offset_copy  # noqa: E402

MARKER_SIZE = 36  # scatter ``s``, points**2
LABEL_FONTSIZE = 7
# label placement: candidate spots, nearest first: each direction at each distance (points from the marker centre)
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))
DISTANCES = (5, 12, 20, 30, 42, 56)


def _front(pts: List[dict], key: str, lower_is_better: bool) -> List[bool]:
    """Per point: no other point is at least as good in ``key`` and CIDEr-D and better in one
    (False where ``key`` is None)."""
    s = -1 if lower_is_better else 1
    def dominates(q, p):
        return (s * q[key] >= s * p[key] and q["cider"] >= p["cider"]
                and (s * q[key] > s * p[key] or q["cider"] > p["cider"]))
    have = [p for p in pts if p[key] is not None]
    return [p[key] is not None and not any(q is not p and dominates(q, p) for q in have) for p in pts]


def chart_points(rows: List[dict]) -> List[Dict[str, object]]:
    """Per row: name, median batch-1 latency (ms), CIDEr-D (x100), throughput (items/s, None
    when skipped), and whether it is on the latency Pareto front (``pareto``: no row is at least
    as fast and as good, and better in one) and on the throughput one (``pareto_throughput``)."""
    pts = [{"name": r["name"], "latency_ms": round(float(r["latency"]["median_ms"]), 4),
            "cider": round(100 * float(r["scores"]["CIDEr-D"]), 4)} for r in rows]
    for p, flag in zip(pts, _front(pts, "latency_ms", lower_is_better=True)):
        p["pareto"] = flag
    for p, r in zip(pts, rows):
        p["throughput"] = None if r.get("throughput") is None else round(float(r["throughput"]), 4)
    for p, flag in zip(pts, _front(pts, "throughput", lower_is_better=False)):
        p["pareto_throughput"] = flag
    return pts


def _area(a: Bbox, b: Bbox) -> float:
    """Area of the intersection of two display boxes (0 when disjoint)."""
    i = Bbox.intersection(a, b)
    return 0.0 if i is None else i.width * i.height


def place_labels(ax, xs: List[float], ys: List[float], names: List[str], order: List[int],
                 fontsize: float = LABEL_FONTSIZE) -> list:
    """Annotate each point with its name, in ``order``: the label takes the first candidate spot
    (``DIRECTIONS`` x ``DISTANCES`` around the point) whose box overlaps no placed label, no
    marker, no legend and stays inside the axes, preferring spots that hang nearer their own
    point than any other; when none is free, the least-overlapping one.
    A label away from the default spot (right of the point) gets a grey leader line.  Call it
    after the layout is final; returns the Text objects, in point order."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(list(zip(xs, ys)))
    rad = (MARKER_SIZE ** 0.5 / 2 + 1) * px_per_pt
    taken = [Bbox.from_extents(x - rad, y - rad, x + rad, y + rad) for x, y in centres]
    legend = ax.get_legend()
    if legend is not None:  # pin "best" where it is now: it would dodge the labels at save time
        taken.append(legend.get_window_extent(renderer))
        legend.set_loc(tuple(ax.transAxes.inverted().transform(taken[-1].p0)))
    texts = [None] * len(xs)
    for i in order:
        (cx, cy), (x, y) = centres[i], (xs[i], ys[i])
        t = ax.text(x, y, names[i], fontsize=fontsize, ha="left", va="bottom", zorder=4)
        size = t.get_window_extent(renderer)
        w, h = size.width, size.height
        spots = []  # (rank, cost, k, box): free and hanging nearer this point than any other, free, neither
        for k, ((ux, uy), d) in enumerate((u, d) for d in DISTANCES for u in DIRECTIONS):
            r = d * px_per_pt
            box = Bbox.from_bounds(cx + ux * r - w * (1 - ux) / 2, cy + uy * r - h * (1 - uy) / 2, w, h)
            cost = w * h - _area(box, frame) + sum(_area(box, o) for o in taken)  # outside + overlaps
            free = cost == 0 and not any(box.overlaps(o) for o in taken)
            own = all(math.hypot(cx + ux * r - ox, cy + uy * r - oy) >= r * math.hypot(ux, uy)
                      for j, (ox, oy) in enumerate(centres) if j != i)
            spots.append((0 if free and own else 1 if free else 2, cost, k, box))
        _, _, k, box = min(spots, key=lambda s: s[:3])
        t.set_transform(offset_copy(ax.transData, fig, x=(box.x0 - cx) / px_per_pt,
                                    y=(box.y0 - cy) / px_per_pt, units="points"))
        taken.append(box.padded(2))
        if k:  # moved: leader from the marker to the nearest point of the label box
            end = ax.transData.inverted().transform((min(max(cx, box.x0), box.x1), min(max(cy, box.y0), box.y1)))
            ax.plot([x, end[0]], [y, end[1]], color="0.45", lw=0.7, zorder=2.5, scalex=False, scaley=False,
                    gid="label-leader")
        texts[i] = t
    return texts


def _panel(ax, points: List[dict], key: str, flag: str, xlabel: str, lower_is_better: bool) -> None:
    """One scatter panel: CIDEr-D against ``key`` (log x), Pareto points red, their front a step
    line; y limits fixed (x ones by ``_fit_x`` once the layout is final)."""
    xs = [p[key] for p in points]
    ys = [p["cider"] for p in points]
    ax.scatter(xs, ys, c=["tab:red" if p[flag] else "tab:blue" for p in points], s=MARKER_SIZE, zorder=3)
    front = sorted((p for p in points if p[flag]), key=lambda p: p[key])
    if len(front) > 1:  # best CIDEr-D reachable at each speed: lower latency / higher throughput
        ax.step([p[key] for p in front], [p["cider"] for p in front], where="post" if lower_is_better else "pre",
                color="tab:red", alpha=0.6, lw=1.2, zorder=2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(y=0.12)
    ax.set_ylim(ax.get_ylim())  # freeze: leader lines must not rescale
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CIDEr-D")
    ax.grid(True, which="both", alpha=0.3)


def _fit_x(ax, xs: List[float], names: List[str]) -> None:
    """Log x limits that leave room for the widest label (and its gap) on both sides of the
    points (at most a third of the width each), and ticks at 1-2-5 steps."""
    renderer = ax.figure.canvas.get_renderer()
    font = FontProperties(size=LABEL_FONTSIZE)
    room = max(renderer.get_text_width_height_descent(n, font, ismath=False)[0] for n in names)
    room += 2 * DISTANCES[0] * ax.figure.dpi / 72
    frac = min(room / ax.get_window_extent(renderer).width, 1 / 3)
    span = math.log10(max(xs) / min(xs)) or 0.5  # decades spanned by the points
    side = 10 ** (frac * span / (1 - 2 * frac + 1e-9))
    lo, hi = min(xs) / side, max(xs) * side
    ax.set_xlim(lo, hi)
    ticks = [m * 10.0 ** e for e in range(-3, 8) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    if ticks:
        ax.set_xticks(ticks)


def draw_pareto(points: List[Dict[str, object]], path: str, caption: str, title: str = "",
                throughput_batch: Optional[int] = None) -> "plt.Figure":
    """Write the chart of ``points`` (``chart_points``) to ``path`` (PNG); returns the figure.
    Left panel: CIDEr-D vs batch-1 latency; a right panel vs throughput (at batch
    ``throughput_batch``) when every point has a throughput."""
    both = bool(points) and all(p.get("throughput") is not None for p in points)
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(13 if both else 8, 5.2), dpi=110, squeeze=False)
    axes = list(axes[0])
    _panel(axes[0], points, "latency_ms", "pareto", "batch-1 latency, ms (median, log scale)", True)
    if both:
        at = f" at batch {throughput_batch}" if throughput_batch else ""
        _panel(axes[1], points, "throughput", "pareto_throughput", f"throughput{at}, items/s (log scale)", False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.01, caption, fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    order = sorted(range(len(points)), key=lambda i: (-points[i]["cider"], points[i]["latency_ms"], points[i]["name"]))
    names = [p["name"] for p in points]
    for ax, key in zip(axes, ("latency_ms", "throughput")):
        _fit_x(ax, [p[key] for p in points], names)
        place_labels(ax, [p[key] for p in points], [p["cider"] for p in points], names, order)
    fig.savefig(path, metadata={"Points": json.dumps(points), "Description": caption})
    return fig
