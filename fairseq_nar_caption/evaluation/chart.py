"""The speed–quality chart of a benchmark run: CIDEr-D against batch-1 latency.

One point per row (log latency axis), the Pareto front (no other row is both faster and
better) drawn as a step line, the machine and date in the caption.  ``chart_points``
gives exactly what is plotted; the benchmark JSON stores it, and the PNG carries the same
list in its metadata (``Points``), so a reader (and the tests) can check one against the
other.
"""
import json
import logging
from typing import Dict, List

for _name in ("matplotlib", "PIL"):  # font-matching chatter when the root logger is at DEBUG (fairseq)
    logging.getLogger(_name).setLevel(logging.WARNING)

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def chart_points(rows: List[dict]) -> List[Dict[str, object]]:
    """Per row: name, median batch-1 latency (ms), CIDEr-D (x100) and whether it is on the
    Pareto front (no row is at least as fast and as good, and better in one)."""
    pts = [{"name": r["name"], "latency_ms": round(float(r["latency"]["median_ms"]), 4),
            "cider": round(100 * float(r["scores"]["CIDEr-D"]), 4)} for r in rows]
    for p in pts:
        p["pareto"] = not any(q is not p and q["latency_ms"] <= p["latency_ms"] and q["cider"] >= p["cider"]
                              and (q["latency_ms"] < p["latency_ms"] or q["cider"] > p["cider"]) for q in pts)
    return pts


def draw_pareto(points: List[Dict[str, object]], path: str, caption: str, title: str = "") -> "plt.Figure":
    """Write the chart of ``points`` (``chart_points``) to ``path`` (PNG); returns the figure."""
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    xs = [p["latency_ms"] for p in points]
    ys = [p["cider"] for p in points]
    colours = ["tab:red" if p["pareto"] else "tab:blue" for p in points]
    ax.scatter(xs, ys, c=colours, s=36, zorder=3)
    for p in points:
        ax.annotate(p["name"], (p["latency_ms"], p["cider"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["latency_ms"])
    if len(front) > 1:
        ax.step([p["latency_ms"] for p in front], [p["cider"] for p in front], where="post", color="tab:red",
                alpha=0.6, lw=1.2, zorder=2, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(xs), max(xs)
    ax.set_xlim(lo / 1.3, hi * 1.6)  # room for the labels
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if lo / 1.3 <= t <= hi * 1.6]
    if ticks:
        ax.set_xticks(ticks)
    ax.set_xlabel("batch-1 latency, ms (median, log scale)")
    ax.set_ylabel("CIDEr-D")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.text(0.01, 0.01, caption, fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, metadata={"Points": json.dumps(points), "Description": caption})
    return fig
