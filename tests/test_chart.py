"""The speed–quality chart (evaluation/chart.py): Pareto flags, the throughput panel, label placement."""
import json
from itertools import combinations

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from fairseq_nar_caption.evaluation.chart import chart_points, draw_pareto


def _row(name, latency_ms, cider, throughput=None, batch=64):
    """A benchmark row as far as the chart reads it (CIDEr-D as scored, i.e. /100)."""
    return {"name": name, "latency": {"median_ms": latency_ms}, "scores": {"CIDEr-D": cider / 100},
            "throughput": throughput, "throughput_batch": batch}


# name, latency ms, CIDEr-D, throughput items/s, on the latency front, on the throughput front (worked by hand)
HAND = [("A", 10, 50, 100, True, True),    # G ties it exactly: neither dominates the other
        ("B", 20, 60, 40, True, True),     # best CIDEr-D
        ("C", 20, 55, 80, False, True),    # B is as fast and better; nobody is >= 80 items/s and >= 55
        ("D", 5, 40, 150, True, True),     # fastest on both axes
        ("E", 30, 58, 30, False, False),   # B is faster, higher throughput and better
        ("F", 12, 50, None, False, False),  # A is faster and as good; no throughput
        ("G", 10, 50, 100, True, True)]


def _dominated(p, pts, key, sign):
    """Brute force: some other point is >= on sign*key and on CIDEr-D, and > on one."""
    return any(q is not p and q[key] is not None and sign * q[key] >= sign * p[key] and q["cider"] >= p["cider"]
               and (sign * q[key] > sign * p[key] or q["cider"] > p["cider"]) for q in pts)


def test_chart_points_pareto_flags():
    pts = chart_points([_row(n, lat, c, thr) for n, lat, c, thr, _, _ in HAND])
    assert [list(p) for p in pts] == [["name", "latency_ms", "cider", "pareto", "throughput", "pareto_throughput"]] * 7
    assert [p["pareto"] for p in pts] == [h[4] for h in HAND]
    assert [p["pareto_throughput"] for p in pts] == [h[5] for h in HAND]
    assert [p["pareto"] for p in pts] == [not _dominated(p, pts, "latency_ms", -1) for p in pts]
    assert [p["pareto_throughput"] for p in pts] == [p["throughput"] is not None
                                                     and not _dominated(p, pts, "throughput", 1) for p in pts]
    assert pts[5]["throughput"] is None and pts[0]["throughput"] == 100.0 and pts[1]["cider"] == pytest.approx(60)


def _clustered(with_throughput):
    """Five rows within 2 % latency, 1 CIDEr-D point and 2 % throughput, plus two far rows."""
    spec = [("CT-MP T=2 B=6", 10.0, 50.0, 400), ("CT-MP T=1 B=6", 10.05, 50.2, 404),
            ("NAR iter 4", 10.1, 50.5, 398), ("NAR iter 2 + LPD", 10.15, 50.8, 402), ("MIR T=3", 10.2, 51.0, 406),
            ("greedy", 40.0, 56.0, 90), ("beam5", 90.0, 60.0, 30)]
    return chart_points([_row(n, lat, c, thr if with_throughput else None) for n, lat, c, thr in spec])


def _labels_readable(fig):
    """Every axes' labels (its ``texts``): pairwise disjoint and inside the axes, in display coordinates."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == 7
        for a, b in combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)
        for b in boxes:
            assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1


@pytest.mark.parametrize("with_throughput", [False, True], ids=["latency-only", "with-throughput"])
def test_draw_pareto_clustered_labels_png(tmp_path, with_throughput):
    points = _clustered(with_throughput)
    path = tmp_path / "chart.png"
    fig = draw_pareto(points, str(path), caption="test machine · cpu · 2024-01-01", title="clustered",
                      throughput_batch=64)
    try:
        assert len(fig.axes) == (2 if with_throughput else 1)
        _labels_readable(fig)
        assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(p["name"] for p in points)
        assert any(line.get_gid() == "label-leader" for line in fig.axes[0].lines)  # the cluster pushes some out
        if with_throughput:
            assert fig.axes[1].get_xlabel() == "throughput at batch 64, items/s (log scale)"
        assert Image.open(path).text["Points"] == json.dumps(points)
    finally:
        plt.close(fig)


def test_draw_pareto_is_deterministic(tmp_path):
    points = _clustered(True)
    figs = [draw_pareto(points, str(tmp_path / f"{k}.png"), caption="c") for k in range(2)]
    try:
        spots = [[t.get_window_extent(f.canvas.get_renderer()).bounds for ax in f.axes for t in ax.texts] for f in figs]
        assert spots[0] == spots[1]
        assert (tmp_path / "0.png").read_bytes() == (tmp_path / "1.png").read_bytes()
    finally:
        for f in figs:
            plt.close(f)


def test_draw_pareto_crowded_falls_back(tmp_path):
    """More labels than free spots (20 rows on one spot): placing ends, with every label drawn."""
    points = chart_points([_row(f"row {k}", 10.0, 50.0, 100.0) for k in range(20)])
    fig = draw_pareto(points, str(tmp_path / "crowded.png"), caption="c")
    try:
        assert [len(ax.texts) for ax in fig.axes] == [20, 20] and all(p["pareto"] for p in points)
    finally:
        plt.close(fig)
