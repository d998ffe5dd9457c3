"""VL metrics: OFA answer field, VQA normalisation and soft accuracy, grounding hits, accuracy."""
import itertools

import pytest

from fairseq_nar_caption.data.ofa_tsv import format_ofa_answers, parse_ofa_answers
from fairseq_nar_caption.evaluation.vl_metrics import accuracy, answer_soft_score, grounding_hits, normalize_answer, vqa_score


def test_parse_ofa_answers():
    assert parse_ofa_answers("1.0|!+no") == {"no": 1.0}
    assert parse_ofa_answers("0.6|!+two&&1.0|!+2&&0.3|!+ 3 ") == {"two": 0.6, "2": 1.0, "3": 0.3}
    # toy data line
    assert parse_ofa_answers("1.0|!+square") == {"square": 1.0}


@pytest.mark.parametrize("field, what", [
    ("", "empty"), ("yes", "lacks"), ("x|!+yes", "not a number"), ("1.5|!+yes", "outside"),
    ("1.0|!+", "empty answer"), ("1.0|!+yes&&0.3|!+yes", "twice"),
])
def test_parse_ofa_answers_rejects(field, what):
    with pytest.raises(ValueError, match=what):
        parse_ofa_answers(field)


def test_format_round_trip():
    d = {"two": 0.6, "2": 1.0, "3": 0.3}
    s = format_ofa_answers(d)
    assert s == "1.0|!+2&&0.6|!+two&&0.3|!+3"
    assert parse_ofa_answers(s) == d
    with pytest.raises(ValueError):
        format_ofa_answers({"a&&b": 1.0})


@pytest.mark.parametrize("raw, norm", [
    ("Yes", "yes"), ("Two", "2"), ("two dogs!", "2 dogs"), ("The red one.", "red 1"),
    ("none", "0"), ("an apple", "apple"), ("dont know", "don't know"), ("2.5", "2.5"),
    ("black-and-white", "black and white"),  # '-' not touching a space: replaced by a space
    ("black - white", "black white"),  # touching a space: deleted
    ("1,000", "1000"),  # digit,digit: every punctuation mark is deleted
    ("yes.", "yes"), ("  Ten\tcats ", "10 cats"), ("(left)", "left"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_answer_soft_score_equals_official_leave_one_out():
    # direct computation: 10 humans, a prediction matching m of them
    for m in range(11):
        humans = ["x"] * m + ["y"] * (10 - m)
        direct = sum(min(1.0, sum(h == "x" for h in subset) / 3)
                     for subset in itertools.combinations(humans, 9)) / 10
        assert answer_soft_score(m) == pytest.approx(direct)
    assert [round(answer_soft_score(m), 6) for m in range(5)] == [0.0, 0.3, 0.6, 0.9, 1.0]


def test_vqa_score():
    ans = parse_ofa_answers("0.6|!+two&&1.0|!+2&&0.3|!+three")
    assert vqa_score("2", ans) == 1.0
    assert vqa_score("two", ans) == 1.0  # "two" normalises to "2": the higher confidence counts
    assert vqa_score("Three", ans) == 0.3
    assert vqa_score("four", ans) == 0.0
    assert vqa_score("", ans) == 0.0
    assert vqa_score("The cat.", {"cat": 0.9}) == 0.9


def test_grounding_hits():
    gt = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    pred = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9], None]
    # IoU: 1.0, 0.5 (exactly at the threshold: a hit), 0.49, malformed
    assert grounding_hits(pred, gt) == [True, True, False, False]
    assert grounding_hits(pred, gt, thr=0.9) == [True, False, False, False]
    with pytest.raises(ValueError):
        grounding_hits(pred[:2], gt)


def test_accuracy():
    assert accuracy(["a", "b", "c", "d"], ["a", "b", "x", "y"]) == 0.5
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        accuracy([], [])


# --- score_vl ---------------------------------------------------------------------------------
import base64  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from conftest import run_cli  # noqa: E402
import sys  # noqa: E402

from PIL import Image  # noqa: E402

from fairseq_nar_caption.cli.score_vl import score_vl  # noqa: E402
from fairseq_nar_caption.errors import DataError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def gen_output(path, hyps, order=None):
    """fairseq-generate-like stdout: S/T/H/D/P lines per sample, samples in a shuffled order."""
    lines = ["2026-01-01 | INFO | fairseq_cli.generate | loading"]
    for i in order or range(len(hyps)):
        lines += [f"S-{i}\tsrc", f"H-{i}\t-0.5\traw {i}", f"D-{i}\t-0.5\t{hyps[i]}", f"P-{i}\t-0.1 -0.2"]
    return write(path, lines)


def png_b64(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (9, 9, 9)).save(buf, format="PNG")
    return base64.urlsafe_b64encode(buf.getvalue()).decode()


def test_score_grounding_image_dir_and_base64(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 50)).save(tmp_path / "img" / "7.png")
    Image.new("RGB", (96, 96)).save(tmp_path / "img" / "8.png")
    # toy layout (header, no image column); 101 bins: bin k -> k/100 * size
    tsv = write(tmp_path / "g.tsv", ["uniq_id\timage_id\ttext\tbox",
                                     "7_0\t7\tthe red one\t10,5,50,25",
                                     "8_0\t8\tthe blue one\t0,0,48,48",
                                     "8_1\t8\tthe big one\t0,0,96,96",
                                     "7_1\t7\tthe cat\t0,0,100,50"])
    hyps = ["<bin_10><bin_10><bin_50><bin_50>",  # (10,5,50,25): exact hit
            "<bin_0><bin_0><bin_50><bin_50>",  # (0,0,48,48): exact hit
            "<bin_0><bin_0><bin_25><bin_100>",  # (0,0,24,96) vs (0,0,96,96): IoU 0.25, miss
            "<bin_0><bin_0><bin_100>"]  # 3 coordinates (CTC merged): malformed miss
    gen = gen_output(tmp_path / "gen.txt", hyps, order=[2, 0, 3, 1])
    r = score_vl("grounding", tsv, gen, image_dir=str(tmp_path / "img"), num_bins=101)
    assert r["scores"]["acc@0.5"] == 0.5 and r["malformed"] == 1 and r["num_items"] == 4
    assert r["scores"]["mean_iou"] == pytest.approx((1 + 1 + 0.25 + 0) / 4)

    # OFA layout: no header, base64 image column (uniq_id, image_id, text, box, image)
    ofa = write(tmp_path / "g_ofa.tsv", [f"7_0\t7\tthe red one\t10,5,50,25\t{png_b64(100, 50)}",
                                         f"8_0\t8\tthe blue one\t0,0,48,48\t{png_b64(96, 96)}",
                                         f"8_1\t8\tthe big one\t0,0,96,96\t{png_b64(96, 96)}",
                                         f"7_1\t7\tthe cat\t0,0,100,50\t{png_b64(100, 50)}"])
    r2 = score_vl("grounding", ofa, gen, num_bins=101)
    assert r2["scores"] == r["scores"] and r2["malformed"] == 1
    with pytest.raises(DataError, match="--num-bins"):
        score_vl("grounding", ofa, gen, num_bins=100)  # <bin_100> cannot exist with 100 bins
    with pytest.raises(DataError, match="--image-dir"):
        score_vl("grounding", tsv, gen, num_bins=101)  # no image column and no folder


def test_score_vqa_and_entailment(tmp_path):
    tsv = write(tmp_path / "v.tsv", ["uniq_id\timage_id\tquestion\tanswers",
                                     "1_0\t1\thow many?\t0.6|!+two&&1.0|!+3&&0.3|!+4",
                                     "1_1\t1\tcolour?\t1.0|!+red",
                                     "2_0\t2\twhat?\t0.9|!+cat&&0.3|!+dog"])
    gen = gen_output(tmp_path / "gen.txt", ["Two", "red", "dog"])
    r = score_vl("vqa", tsv, gen)
    assert r["scores"]["soft_accuracy"] == pytest.approx((0.6 + 1.0 + 0.3) / 3)
    assert r["scores"]["exact_accuracy"] == pytest.approx(1 / 3)

    tsv = write(tmp_path / "e.tsv", ["uniq_id\timage_id\thypothesis\tlabel",
                                     "1_0\t1\ta cat\tentailment", "2_0\t2\ta dog\tneutral",
                                     "3_0\t3\ta cow\tcontradiction"])
    gen = gen_output(tmp_path / "gen_e.txt", ["entailment", " Neutral", "neutral"])
    assert score_vl("entailment", tsv, gen)["scores"]["accuracy"] == pytest.approx(2 / 3)


def test_score_refuses_bad_ids(tmp_path):
    tsv = write(tmp_path / "e.tsv", ["uniq_id\timage_id\thypothesis\tlabel", "1_0\t1\ta\tneutral", "2_0\t2\tb\tneutral"])
    missing = gen_output(tmp_path / "missing.txt", ["neutral", "neutral"], order=[0])
    with pytest.raises(DataError, match=r"missing.txt: no hypothesis for sample id 1"):
        score_vl("entailment", tsv, missing)
    dup = gen_output(tmp_path / "dup.txt", ["neutral", "neutral"], order=[0, 1, 1])
    with pytest.raises(DataError, match=r"dup.txt:\d+: sample id 1 appears twice"):
        score_vl("entailment", tsv, dup)
    out = gen_output(tmp_path / "out.txt", ["neutral", "neutral", "neutral"])
    with pytest.raises(DataError, match=r"out.txt:\d+: sample id 2 is outside the 2 rows"):
        score_vl("entailment", tsv, out)
    bad = write(tmp_path / "bad.txt", ["D-x\t0\tneutral"])
    with pytest.raises(DataError, match="bad.txt:1: malformed"):
        score_vl("entailment", tsv, bad)


def test_score_caption_equals_coco_scores(tmp_path):
    from fairseq_nar_caption.evaluation.coco_metrics import coco_scores

    # OFA caption test layout: one row per image, references joined by &&; no image needed
    tsv = write(tmp_path / "c.tsv", ["1\t1\ta red circle on the left&&a red ball\t\tx",
                                     "2\t2\ta blue square&&one blue box on the right\t\tx",
                                     "3\t3\ta green star&&a small green star\t\tx"])
    hyps = ["a red circle", "a blue box on the right", "a green circle"]
    gen = gen_output(tmp_path / "gen.txt", hyps, order=[1, 2, 0])
    metrics = ["Bleu", "CIDEr-D"]
    r = score_vl("caption", tsv, gen, metrics=metrics, spice="off")
    refs = {"1": ["a red circle on the left", "a red ball"], "2": ["a blue square", "one blue box on the right"],
            "3": ["a green star", "a small green star"]}
    direct = coco_scores(refs, dict(zip("123", hyps)), spice="off", metrics=metrics)
    direct.pop("skipped")
    assert r["scores"] == direct and r["num_images"] == 3
    # --refs: a COCO caption file with other references changes the scores accordingly
    doc = {"images": [{"id": i} for i in "123"],
           "annotations": [{"image_id": i, "id": k, "caption": c} for k, (i, c) in
                           enumerate([("1", "a red circle"), ("2", "a blue box on the right"), ("3", "a green circle")])]}
    (tmp_path / "refs.json").write_text(json.dumps(doc))
    r2 = score_vl("caption", tsv, gen, refs=str(tmp_path / "refs.json"), metrics=["Bleu"], spice="off")
    assert r2["scores"]["Bleu_1"] == pytest.approx(1.0)


def test_score_vl_cli(tmp_path):
    tsv = write(tmp_path / "e.tsv", ["1_0\t1\tIMG\ta cat\tpremise\tentailment",  # OFA SNLI-VE layout
                                     "2_0\t2\tIMG\ta dog\tpremise\tneutral"])
    gen = gen_output(tmp_path / "gen.txt", ["entailment", "contradiction"])
    out = tmp_path / "s.json"
    p = run_cli([sys.executable, "-m", "fairseq_nar_caption.cli.score_vl", "--task", "entailment",
                 "--tsv", tsv, "--generate-output", gen, "--name", "ve", "--json-out", str(out)],
                check=False, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ve  entailment  n=2  accuracy=50.0"
    assert json.loads(out.read_text())["scores"] == {"accuracy": 0.5}
    p = run_cli([sys.executable, "-m", "fairseq_nar_caption.cli.score_vl", "--task", "entailment",
                 "--tsv", tsv, "--generate-output", str(tmp_path / "nope.txt")], check=False, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0 and "nope.txt: fairseq-generate output not found" in p.stderr
