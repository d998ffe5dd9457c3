"""Box tokens: OFA quantisation round trip, four-coordinate CTC decoding, IoU."""
import itertools
import math
import random

import pytest
import torch

from fairseq_nar_caption.data.boxes import bin_index, bin_symbol, dequantize_box, iou, parse_box_tokens, quantize_box
from fairseq_nar_caption.generators.ctc import decode_box_ctc

NEG = -20.0  # log-prob of "impossible" entries in the hand-made frames


def test_bin_symbols():
    assert bin_symbol(0) == "<bin_0>" and bin_symbol(999) == "<bin_999>"
    assert bin_index("<bin_42>") == 42 and bin_index("<bin_0>") == 0
    for s in ("<bin_>", "<bin_01>", "bin_3", "<bin_3> ", "<blank>", "<bin_-1>"):
        assert bin_index(s) is None
    with pytest.raises(ValueError):
        bin_symbol(-1)
    # fairseq's sentencepiece post-processing glues the symbols together
    assert parse_box_tokens("<bin_3><bin_17><bin_3><bin_999>") == [3, 17, 3, 999]
    assert parse_box_tokens("<bin_1> <bin_2> x") == [1, 2]


def test_quantize_hand_worked():
    # 640x480 image, 1000 bins: x/640*999, y/480*999, Python round = half to even (as torch.round)
    assert quantize_box([0, 0, 640, 480], 640, 480, 1000) == [0, 0, 999, 999]
    # 320/640*999 = 499.5 -> 500 (even); 480/640*999 = 749.25 -> 749
    assert quantize_box([320, 240, 480, 360], 640, 480, 1000) == [500, 500, 749, 749]
    # toy image 96x96, 100 bins: 56/96*99 = 57.75 -> 58, 5/96*99 = 5.156 -> 5, 88 -> 90.75 -> 91, 36 -> 37.125 -> 37
    assert quantize_box([56, 5, 88, 36], 96, 96, 100) == [58, 5, 91, 37]
    assert dequantize_box([0, 0, 999, 999], 640, 480, 1000) == [0.0, 0.0, 640.0, 480.0]
    assert dequantize_box([500, 500, 749, 749], 640, 480, 1000) == pytest.approx(
        [500 / 999 * 640, 500 / 999 * 480, 749 / 999 * 640, 749 / 999 * 480])


def test_quantize_matches_ofa_pipeline():
    """Direct transcription of OFA's steps: resize to S x S (RandomResize([S], max_size=S)),
    scale the box, divide by max_image_size = S, round(x * (num_bins - 1)) with torch.round."""
    rng = random.Random(0)
    for _ in range(200):
        w, h = rng.randint(50, 900), rng.randint(50, 900)
        x0, x1 = sorted(rng.uniform(0, w) for _ in range(2))
        y0, y1 = sorted(rng.uniform(0, h) for _ in range(2))
        if x1 - x0 < 1e-3 or y1 - y0 < 1e-3:
            continue
        size = 512
        scaled = torch.tensor([x0, y0, x1, y1], dtype=torch.float64) * torch.tensor(
            [size / w, size / h, size / w, size / h], dtype=torch.float64)
        ofa = (scaled / size * 999).round().long().tolist()
        assert quantize_box([x0, y0, x1, y1], w, h, 1000) == ofa


def test_round_trip_within_half_a_bin():
    rng = random.Random(1)
    for num_bins in (2, 10, 100, 1000):
        for _ in range(100):
            w, h = rng.uniform(10, 1000), rng.uniform(10, 1000)
            x0, x1 = sorted(rng.uniform(0, w) for _ in range(2))
            y0, y1 = sorted(rng.uniform(0, h) for _ in range(2))
            if x1 <= x0 or y1 <= y0:
                continue
            box = [x0, y0, x1, y1]
            bins = quantize_box(box, w, h, num_bins)
            assert all(0 <= b < num_bins for b in bins)
            back = dequantize_box(bins, w, h, num_bins)
            for v, r, size in zip(box, back, (w, h, w, h)):
                assert abs(v - r) <= size / (2 * (num_bins - 1)) + 1e-9
            # quantising the de-quantised box gives the same bins again
            if back[2] > back[0] and back[3] > back[1]:
                assert quantize_box(back, w, h, num_bins) == bins


@pytest.mark.parametrize("box, what", [
    ([10, 10, 10, 20], "degenerate"), ([10, 20, 30, 5], "degenerate"), ([-1, 0, 10, 10], "outside"),
    ([0, 0, 101, 10], "outside"), ([0, 0, 10, 51], "outside"), ([0, 0, float("nan"), 10], "non-finite"),
    ([0, 0, 10], "four numbers"),
])
def test_quantize_rejects_bad_boxes(box, what):
    with pytest.raises(ValueError, match=what) as e:
        quantize_box(box, 100, 50, 1000)
    assert "box" in str(e.value)


def test_dequantize_rejects_bad_bins():
    with pytest.raises(ValueError, match="exactly 4"):
        dequantize_box([1, 2, 3], 10, 10, 100)
    with pytest.raises(ValueError, match="not a bin index"):
        dequantize_box([1, 2, 3, 100], 10, 10, 100)


# --- decode_box_ctc ---------------------------------------------------------------------------
# Vocabulary of the hand-made examples: 0 = blank, 1 = eos, 2.. = <bin_0>.. (10 bins)
BLANK, EOS, NUM_BINS = 0, 1, 10
BIN_IDS = torch.arange(2, 2 + NUM_BINS)


def frames(spec):
    """spec: per frame a dict {token id: log-prob}; everything else NEG."""
    lp = torch.full((len(spec), 2 + NUM_BINS), NEG)
    for t, d in enumerate(spec):
        for k, v in d.items():
            lp[t, k] = v
    return lp


def b(i):
    return 2 + i


def collapse(ids):
    out, prev = [], None
    for t in ids:
        if t != prev and t != BLANK:
            out.append(t)
        prev = t
    return out


def test_merged_equal_neighbours_give_four_coordinates():
    # argmax path: <bin_3> <bin_3> <bin_7> <bin_1> blank -> CTC collapse keeps only 3 coordinates
    lp = frames([{b(3): -0.1}, {b(3): -0.1}, {b(7): -0.1}, {b(1): -0.1}, {BLANK: -0.1}])
    assert [i - 2 for i in collapse(lp.argmax(1).tolist())] == [3, 7, 1]
    assert decode_box_ctc(lp, BIN_IDS, BLANK) == [3, 3, 7, 1]


def test_span_over_several_frames_and_blank_gap():
    # argmax: <bin_2> <bin_2> <bin_5> blank <bin_8> <bin_9>: every frame can keep its argmax with
    # spans {0,1}=2, {2}=5, {4}=8, {5}=9 (frame 3 blank); splitting {0,1} into 2,2 would force
    # 8 and 9 into one span and cost more.
    lp = frames([{b(2): -0.1}, {b(2): -0.2}, {b(5): -0.1}, {BLANK: -0.1}, {b(8): -0.1}, {b(9): -0.1}])
    assert decode_box_ctc(lp, BIN_IDS, BLANK) == [2, 5, 8, 9]


def test_blank_frame_forced_into_a_span():
    # N = 4: all four frames must be spans; frame 1 prefers blank (-0.1), its best bin is 2
    # (-2.0, vs bin 1 at -3.0), so the box is 1, 2, 2, 3 (total -0.1-2.0-0.1-0.1).
    lp = frames([{b(1): -0.1}, {BLANK: -0.1, b(2): -2.0, b(1): -3.0}, {b(2): -0.1}, {b(3): -0.1}])
    assert decode_box_ctc(lp, BIN_IDS, BLANK) == [1, 2, 2, 3]


def test_span_label_is_best_sum_over_frames():
    # frames 0-1 must form one span (N = 5, frames 2-4 are three other coordinates, no blanks
    # are better than -20): frame 0 says 4 (-0.5) vs 6 (-1.0), frame 1 says 6 (-0.2) vs 4 (-1.5):
    # sums: 4 -> -2.0, 6 -> -1.2, so the span label is 6 although frame 0 alone prefers 4.
    lp = frames([{b(4): -0.5, b(6): -1.0}, {b(6): -0.2, b(4): -1.5}, {b(1): -0.1}, {b(2): -0.1}, {b(3): -0.1}])
    # splitting frames 0 and 1 would merge two of 1, 2, 3 (cost ~ -20): worse
    assert decode_box_ctc(lp, BIN_IDS, BLANK) == [6, 1, 2, 3]


def test_masked_minus_inf_entries():
    # generators mask tokens with -inf (here bin 3 in frame 0 and the blank in frame 2); the -inf
    # must neither produce NaN in the span sums nor be chosen
    lp = frames([{b(1): -0.1}, {b(2): -0.1}, {b(3): -0.1}, {b(4): -0.1}, {BLANK: -0.1}])
    lp[0, b(3)] = -float("inf")
    lp[2, BLANK] = -float("inf")
    assert decode_box_ctc(lp, BIN_IDS, BLANK) == [1, 2, 3, 4]
    lp[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        decode_box_ctc(lp, BIN_IDS, BLANK)


def test_extra_blank_ids_let_eos_fill_frames():
    # 4 bins then an EOS frame: with EOS scored as blank-like the box is clean; by default the
    # EOS frame (blank -20) is absorbed by the cheapest span extension: still 4 coordinates.
    lp = frames([{b(1): -0.1}, {b(2): -0.1}, {b(3): -0.1}, {b(4): -0.1}, {EOS: -0.1}])
    assert decode_box_ctc(lp, BIN_IDS, BLANK, extra_blank_ids=[EOS]) == [1, 2, 3, 4]
    assert len(decode_box_ctc(lp, BIN_IDS, BLANK)) == 4


def placements(n):
    """Every placement of 4 ordered, contiguous, non-overlapping, non-empty frame spans in n frames."""
    for bounds in itertools.combinations_with_replacement(range(n + 1), 8):
        spans = [(bounds[2 * j], bounds[2 * j + 1]) for j in range(4)]
        if all(s < e for s, e in spans):  # sorted bounds: spans are ordered, may touch, never overlap
            yield spans


def alignment_score(lp, bin_ids, blank, spans, labels):
    covered = {t for s, e in spans for t in range(s, e)}
    score = sum(float(lp[t, blank]) for t in range(lp.size(0)) if t not in covered)
    return score + sum(float(lp[s:e, bin_ids[k]].sum()) for (s, e), k in zip(spans, labels))


def brute_force(lp, bin_ids, blank):
    """(best score, its labels) over every placement, each span labelled with its best bin."""
    best = (-math.inf, None)
    for spans in placements(lp.size(0)):
        labels = [int(lp[s:e, bin_ids].sum(0).argmax()) for s, e in spans]
        score = alignment_score(lp, bin_ids, blank, spans, labels)
        if score > best[0] + 1e-12:
            best = (score, labels)
    return best


def score_of(lp, bin_ids, blank, labels):
    """Best alignment score for a fixed label sequence."""
    return max(alignment_score(lp, bin_ids, blank, spans, labels) for spans in placements(lp.size(0)))


@pytest.mark.parametrize("n", [4, 5, 6, 7])
def test_dp_equals_brute_force_on_random_inputs(n):
    g = torch.Generator().manual_seed(n)
    vocab, num_bins = 9, 6
    bin_ids = torch.tensor([3, 4, 5, 6, 7, 8])
    for _ in range(5):
        lp = torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, dim=-1)
        want_score, want_labels = brute_force(lp, bin_ids, blank=0)
        got = decode_box_ctc(lp, bin_ids, blank=0)
        assert len(got) == 4 and all(0 <= k < num_bins for k in got)
        assert score_of(lp, bin_ids, 0, got) == pytest.approx(want_score, abs=1e-9)
        assert got == want_labels


def test_decode_rejects_short_or_bad_input():
    with pytest.raises(ValueError, match="at least 4"):
        decode_box_ctc(torch.zeros(3, 12), BIN_IDS, BLANK)
    with pytest.raises(ValueError, match="blank"):
        decode_box_ctc(torch.zeros(5, 12), BIN_IDS, blank=2)
    with pytest.raises(ValueError, match="bin_ids"):
        decode_box_ctc(torch.zeros(5, 12), torch.tensor([5, 12]), BLANK)
    with pytest.raises(ValueError, match="no finite-scoring placement"):
        decode_box_ctc(torch.full((5, 12), -float("inf")), BIN_IDS, BLANK)
    with pytest.raises(ValueError, match="extra_blank_ids"):
        decode_box_ctc(torch.zeros(5, 12), BIN_IDS, BLANK, extra_blank_ids=[b(3)])
    with pytest.raises(ValueError, match=r"\(N, V\)"):
        decode_box_ctc(torch.zeros(2, 5, 12), BIN_IDS, BLANK)


def test_iou():
    assert iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert iou([0, 0, 2, 2], [2, 0, 4, 2]) == 0.0  # touching edges
    assert iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(4 / 16)
    assert iou([3, 3, 1, 1], [0, 0, 4, 4]) == 0.0  # reversed box has no area
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
