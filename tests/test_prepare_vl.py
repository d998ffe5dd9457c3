"""Real-data preparation for the VL tasks on tiny fixtures in the datasets' own formats."""
import base64
import json
import os
import pickle
import sys

import pytest
from PIL import Image

from conftest import REPO, run_cli
from fairseq_nar_caption.cli.score_vl import score_vl
from fairseq_nar_caption.data.boxes import bin_symbol, quantize_box
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.data.ofa_tsv import (
    OFA_COLUMNS, TsvWriter, b64_to_image, image_size, parse_box_field, read_ofa_tsv, split_captions,
)
from fairseq_nar_caption.evaluation.references import load_coco_refs
from fairseq_nar_caption.data.ofa_tsv import parse_ofa_answers

sys.path.insert(0, os.path.join(REPO, "scripts"))
import prepare_refcoco  # noqa: E402
import prepare_snli_ve  # noqa: E402
import prepare_vl_coco_caption  # noqa: E402
import prepare_vqav2  # noqa: E402


def jpeg(path, w, h, colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, format="JPEG")
    return path


def b64_of(path):
    with open(path, "rb") as f:
        return base64.urlsafe_b64encode(f.read()).decode()


# --- shared module ---------------------------------------------------------------------------

def test_tsv_writer_is_atomic_and_reader_detects_header(tmp_path):
    out = tmp_path / "v.tsv"
    with pytest.raises(DataError, match="item q2: field 'question' contains a tab"):
        with TsvWriter(str(out), OFA_COLUMNS["vqa"]) as w:
            w.write(["q1", "1", "what?", "1.0|!+yes", "", "IMG"], item="q1")
            w.write(["q2", "1", "what\tnow?", "1.0|!+yes", "", "IMG"], item="q2")
    assert not out.exists() and os.listdir(tmp_path) == []  # nothing half-written, no temp file left
    with TsvWriter(str(out), OFA_COLUMNS["vqa"]) as w:
        w.write(["q1", "1", "what?", "1.0|!+yes", "", "IMG"], item="q1")
    rows = read_ofa_tsv(str(out), "vqa")
    assert rows == [{"uniq_id": "q1", "image_id": "1", "question": "what?", "answers": "1.0|!+yes", "objects": "",
                     "image": "IMG", "row": 0, "line": 1}]
    # header line (toy layout): found by name, image column absent
    (tmp_path / "h.tsv").write_text("question_id\timage_id\tquestion\tanswers\n7\t3\tcolour?\t1.0|!+red\n")
    rows = read_ofa_tsv(str(tmp_path / "h.tsv"), "vqa")
    assert rows == [{"uniq_id": "7", "image_id": "3", "question": "colour?", "answers": "1.0|!+red", "row": 0,
                     "line": 2}]
    (tmp_path / "bad.tsv").write_text("1\t2\tx\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: item 1: expected 5 tab-separated fields"):
        read_ofa_tsv(str(tmp_path / "bad.tsv"), "grounding")


# --- COCO captions ---------------------------------------------------------------------------

KARPATHY = [  # (cocoid, split, folder, raw captions)
    (391895, "test", "val2014", ["A man with a red helmet on a small moped.", "A man riding a moped."]),
    (522418, "train", "train2014", ["A woman cutting a cake.", "A woman wearing a net."]),
    (184613, "restval", "val2014", ["A child holding an umbrella."]),
    (554625, "val", "val2014", ["A boy using one computer.", "Boy at a desk."]),
]


def write_karpathy(root, images=KARPATHY, skip_image=None):
    doc = {"dataset": "coco", "images": []}
    for k, (cid, split, folder, caps) in enumerate(images):
        fn = f"COCO_{folder}_{cid:012d}.jpg"
        if cid != skip_image:
            jpeg(str(root / "coco" / folder / fn), 40 + k, 30)
        doc["images"].append({"filepath": folder, "filename": fn, "imgid": k, "split": split, "cocoid": cid,
                              "sentences": [{"raw": c, "tokens": [w.strip(".,").lower() for w in c.split()]}
                                            for c in caps]})
    (root / "dataset_coco.json").write_text(json.dumps(doc))
    return str(root / "dataset_coco.json")


def test_prepare_coco_caption(tmp_path):
    k = write_karpathy(tmp_path)
    out = tmp_path / "out"
    prepare_vl_coco_caption.main(["--karpathy", k, "--image-root", str(tmp_path / "coco"), "--out", str(out)])
    train = read_ofa_tsv(str(out / "caption_train.tsv"), "caption")
    assert [(r["uniq_id"], r["image_id"], r["caption"]) for r in train] == [
        ("522418_0", "522418", "a woman cutting a cake"), ("522418_1", "522418", "a woman wearing a net"),
        ("184613_0", "184613", "a child holding an umbrella")]
    assert train[0]["image"] == b64_of(tmp_path / "coco/train2014/COCO_train2014_000000522418.jpg")
    assert image_size(train[2]["image"]) == (42, 30) and train[0]["objects"] == ""
    test = read_ofa_tsv(str(out / "caption_test.tsv"), "caption")
    assert len(test) == 1 and test[0]["uniq_id"] == test[0]["image_id"] == "391895"
    assert split_captions(test[0]["caption"]) == ["a man with a red helmet on a small moped", "a man riding a moped"]
    assert load_coco_refs(str(out / "caption_test_refs.json")) == {"391895": split_captions(test[0]["caption"])}
    assert list(load_coco_refs(str(out / "caption_val_refs.json"))) == ["554625"]


def test_prepare_coco_caption_missing_image(tmp_path):
    k = write_karpathy(tmp_path, skip_image=554625)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"1 image file\(s\) missing, e.g. 554625 .*COCO_val2014_000000554625.jpg"):
        prepare_vl_coco_caption.main(["--karpathy", k, "--image-root", str(tmp_path / "coco"), "--out", str(out)])
    assert not out.exists()


# --- RefCOCO ---------------------------------------------------------------------------------

def write_refcoco(root, bbox2=(60.0, 10.0, 40.0, 30.0), protocol=2):
    img_dir = root / "train2014"
    jpeg(str(img_dir / "COCO_train2014_000000000009.jpg"), 100, 80)
    jpeg(str(img_dir / "COCO_train2014_000000000025.jpg"), 64, 48, (0, 0, 255))
    instances = {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 100, "height": 80},
                   {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 101, "image_id": 9, "bbox": [10.5, 20.0, 30.0, 40.0], "category_id": 1},
                        {"id": 102, "image_id": 9, "bbox": list(bbox2), "category_id": 1},
                        {"id": 201, "image_id": 25, "bbox": [0, 0, 64, 48], "category_id": 2}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}
    (root / "instances.json").write_text(json.dumps(instances))
    refs = [
        {"ref_id": 1, "ann_id": 101, "image_id": 9, "split": "train", "category_id": 1, "sent_ids": [11, 12],
         "file_name": "COCO_train2014_000000000009_101.jpg",
         "sentences": [{"sent_id": 11, "sent": "man on the left", "raw": "Man on the left", "tokens": []},
                       {"sent_id": 12, "sent": "left  guy\t", "raw": "left guy", "tokens": []}]},
        {"ref_id": 2, "ann_id": 102, "image_id": 9, "split": "testA", "category_id": 1, "sent_ids": [13],
         "file_name": "x", "sentences": [{"sent_id": 13, "sent": "right man", "raw": "right man", "tokens": []}]},
        {"ref_id": 3, "ann_id": 201, "image_id": 25, "split": "train", "category_id": 2, "sent_ids": [14],
         "file_name": "x", "sentences": [{"sent_id": 14, "sent": "dog", "raw": "dog", "tokens": []}]},
    ]
    with open(root / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=protocol)
    return [str(root / "refs(unc).p"), str(root / "instances.json"), str(img_dir)]


def test_prepare_refcoco(tmp_path):
    refs, inst, imgs = write_refcoco(tmp_path)
    out = tmp_path / "out"
    s = prepare_refcoco.main(["--refs", refs, "--instances", inst, "--image-dir", imgs, "--name", "refcoco",
                              "--out", str(out)])
    assert s["rows"] == {"train": 3, "testA": 1} and s["clipped_boxes"] == 0
    train = read_ofa_tsv(str(out / "refcoco_train.tsv"), "grounding")
    assert [(r["uniq_id"], r["image_id"], r["text"], r["box"]) for r in train] == [
        ("1_11", "9", "man on the left", "10.5,20,40.5,60"), ("1_12", "9", "left guy", "10.5,20,40.5,60"),
        ("3_14", "25", "dog", "0,0,64,48")]
    assert b64_to_image(train[2]["image"]).size == (64, 48)
    testa = read_ofa_tsv(str(out / "refcoco_testA.tsv"), "grounding")
    assert parse_box_field(testa[0]["box"]) == [60.0, 10.0, 100.0, 40.0]


def test_prepare_refcoco_boxes_and_unsafe_pickle(tmp_path):
    # overshoot by 0.5 px: clipped and counted; by 5 px: refused, naming the ref
    refs, inst, imgs = write_refcoco(tmp_path, bbox2=(60.0, 10.0, 40.5, 30.0))
    s = prepare_refcoco.main(["--refs", refs, "--instances", inst, "--image-dir", imgs, "--name", "r",
                              "--out", str(tmp_path / "o1")])
    assert s["clipped_boxes"] == 1
    assert read_ofa_tsv(str(tmp_path / "o1" / "r_testA.tsv"), "grounding")[0]["box"] == "60,10,100,40"
    refs, inst, imgs = write_refcoco(tmp_path, bbox2=(60.0, 10.0, 45.0, 30.0))
    with pytest.raises(SystemExit, match=r"ref 2: box .* outside the 100x80 image 9 by 5.00 px"):
        prepare_refcoco.main(["--refs", refs, "--instances", inst, "--image-dir", imgs, "--name", "r",
                              "--out", str(tmp_path / "o2")])
    assert not (tmp_path / "o2").exists()
    # a pickle that would construct an object is refused
    with open(tmp_path / "evil.p", "wb") as f:
        pickle.dump([{"x": DataError("boom")}], f)
    with pytest.raises(DataError, match="refusing to load"):
        prepare_refcoco.load_refs(str(tmp_path / "evil.p"))
    # an image whose size disagrees with instances.json: boxes would be wrong
    refs, inst, imgs = write_refcoco(tmp_path)
    jpeg(os.path.join(imgs, "COCO_train2014_000000000025.jpg"), 50, 48)
    with pytest.raises(SystemExit, match=r"000000000025.jpg: image is 50x48 but the annotation says 64x48"):
        prepare_refcoco.main(["--refs", refs, "--instances", inst, "--image-dir", imgs, "--name", "r",
                              "--out", str(tmp_path / "o3")])


def test_refcoco_tsv_scores_end_to_end(tmp_path):
    """Prepared TSV -> score_vl: quantised ground-truth boxes as hypotheses score 100%."""
    refs, inst, imgs = write_refcoco(tmp_path)
    out = tmp_path / "out"
    prepare_refcoco.main(["--refs", refs, "--instances", inst, "--image-dir", imgs, "--out", str(out)])
    tsv = str(out / "grounding_train.tsv")  # default --name: the file the vision_language task reads
    rows = read_ofa_tsv(tsv, "grounding")
    lines = []
    for r in rows:
        w, h = image_size(r["image"])
        bins = quantize_box(parse_box_field(r["box"]), w, h, 1000)
        # as fairseq-generate prints it after --post-process sentencepiece: no spaces between symbols
        lines.append(f"D-{r['row']}\t-0.1\t{''.join(bin_symbol(b) for b in bins)}")
    lines.append("D-2\t-0.1\t<bin_0><bin_0>")  # replaced below: test the duplicate guard first
    (tmp_path / "gen.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="sample id 2 appears twice"):
        score_vl("grounding", tsv, str(tmp_path / "gen.txt"))
    (tmp_path / "gen.txt").write_text("\n".join(lines[:-1]) + "\n")
    r = score_vl("grounding", tsv, str(tmp_path / "gen.txt"))
    assert r["scores"]["acc@0.5"] == 1.0 and r["malformed"] == 0 and r["scores"]["mean_iou"] > 0.97


# --- VQAv2 -----------------------------------------------------------------------------------

def write_vqa(root):
    img_dir = root / "val2014"
    jpeg(str(img_dir / "COCO_val2014_000000000042.jpg"), 32, 32)
    jpeg(str(img_dir / "COCO_val2014_000000000073.jpg"), 32, 24)
    questions = {"data_subtype": "val2014", "task_type": "OpenEnded", "questions": [
        {"image_id": 42, "question": "How many dogs?", "question_id": 420},
        {"image_id": 42, "question": "Is it\nsunny?", "question_id": 421},
        {"image_id": 73, "question": "What colour is the car?", "question_id": 730}]}
    ans = lambda xs: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(xs)]  # noqa
    annotations = {"annotations": [
        {"question_id": 420, "image_id": 42, "multiple_choice_answer": "2", "answer_type": "number",
         "answers": ans(["2", "2", "two", "Two", "2 ", "3", "three", "3", "4", "2."])},
        {"question_id": 421, "image_id": 42, "multiple_choice_answer": "yes", "answer_type": "yes/no",
         "answers": ans(["yes"] * 10)},
        {"question_id": 730, "image_id": 73, "multiple_choice_answer": "red", "answer_type": "other",
         "answers": ans(["red"] * 3 + ["dark red"] * 2 + ["maroon"] + ["red"] * 0 + ["the red one"] * 4)},
    ]}
    (root / "q.json").write_text(json.dumps(questions))
    (root / "a.json").write_text(json.dumps(annotations))
    return str(root / "q.json"), str(root / "a.json"), str(img_dir)


def test_prepare_vqav2(tmp_path):
    q, a, imgs = write_vqa(tmp_path)
    out = tmp_path / "vqa_val.tsv"
    s = prepare_vqav2.main(["--questions", q, "--annotations", a, "--image-dir", imgs, "--out", str(out),
                            "--answers-out", str(tmp_path / "answers.txt"), "--min-answer-count", "1"])
    assert s["questions"] == 3 and s["images"] == 2
    rows = read_ofa_tsv(str(out), "vqa")
    assert [(r["uniq_id"], r["image_id"], r["question"]) for r in rows] == [
        ("420", "42", "How many dogs?"), ("421", "42", "Is it sunny?"), ("730", "73", "What colour is the car?")]
    # "2","2","two","Two","2 ","2." -> 6 x "2" (1.0); "3","three","3" -> 3 (0.9); "4" -> 1 (0.3)
    assert parse_ofa_answers(rows[0]["answers"]) == {"2": 1.0, "3": 0.9, "4": 0.3}
    assert rows[0]["answers"] == "1.0|!+2&&0.9|!+3&&0.3|!+4"
    assert parse_ofa_answers(rows[1]["answers"]) == {"yes": 1.0}
    # "red" x3 -> 0.9, "dark red" x2 -> 0.6, "maroon" -> 0.3, "the red one" -> "red 1" x4 -> 1.0
    assert parse_ofa_answers(rows[2]["answers"]) == {"red": 0.9, "dark red": 0.6, "maroon": 0.3, "red 1": 1.0}
    assert rows[2]["image"] == b64_of(os.path.join(imgs, "COCO_val2014_000000000073.jpg"))
    assert (tmp_path / "answers.txt").read_text() == "2\t1\nred\t1\nyes\t1\n"

    # no annotations (test split): empty answer column, still readable; the scorer refuses it
    prepare_vqav2.main(["--questions", q, "--image-dir", imgs, "--out", str(tmp_path / "vqa_test.tsv")])
    rows = read_ofa_tsv(str(tmp_path / "vqa_test.tsv"), "vqa")
    assert [r["answers"] for r in rows] == ["", "", ""]
    (tmp_path / "gen.txt").write_text("D-0\t0\t2\nD-1\t0\tyes\nD-2\t0\tred\n")
    with pytest.raises(DataError, match="no answers to score against"):
        score_vl("vqa", str(tmp_path / "vqa_test.tsv"), str(tmp_path / "gen.txt"))
    r = score_vl("vqa", str(out), str(tmp_path / "gen.txt"))
    assert r["scores"]["soft_accuracy"] == pytest.approx((1.0 + 1.0 + 0.9) / 3)


def test_prepare_vqav2_errors(tmp_path):
    q, a, imgs = write_vqa(tmp_path)
    doc = json.loads(open(a).read())
    doc["annotations"].pop(1)
    (tmp_path / "a2.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match=r"a2.json: question 421 has no annotation"):
        prepare_vqav2.main(["--questions", q, "--annotations", str(tmp_path / "a2.json"), "--image-dir", imgs,
                            "--out", str(tmp_path / "x.tsv")])
    os.remove(os.path.join(imgs, "COCO_val2014_000000000073.jpg"))
    with pytest.raises(SystemExit, match=r"question 730: .*COCO_val2014_000000000073.jpg"):
        prepare_vqav2.main(["--questions", q, "--annotations", a, "--image-dir", imgs, "--out",
                            str(tmp_path / "x.tsv")])
    assert not (tmp_path / "x.tsv").exists()


# --- SNLI-VE ---------------------------------------------------------------------------------

def write_snli_ve(root, bad_label=False):
    img_dir = root / "flickr30k_images"
    jpeg(str(img_dir / "2248275918.jpg"), 20, 30)
    jpeg(str(img_dir / "1000092795.jpg"), 30, 20)
    rows = [
        {"Flickr30K_ID": "2248275918", "sentence1": "Two men on a street.", "sentence2": "Men are outside.",
         "gold_label": "entailment", "pairID": "2248275918.jpg#3r1e", "captionID": "2248275918.jpg#3"},
        {"Flickr30K_ID": "2248275918", "sentence1": "Two men on a street.", "sentence2": "Men are asleep.",
         "gold_label": "contradiction", "pairID": "2248275918.jpg#3r1c", "captionID": "2248275918.jpg#3"},
        {"Flickr30K_ID": "1000092795", "sentence1": "A dog runs.", "sentence2": "The dog is happy.",
         "gold_label": "-" if bad_label else "neutral", "pairID": "1000092795.jpg#0r1n"},
    ]
    data = root / "data"
    data.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        (data / f"snli_ve_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(data), str(img_dir)


def test_prepare_snli_ve(tmp_path):
    data, imgs = write_snli_ve(tmp_path)
    out = tmp_path / "out"
    s = prepare_snli_ve.main(["--data-dir", data, "--image-dir", imgs, "--out", str(out), "--splits", "train", "dev"])
    assert s["train"]["pairs"] == 3 and s["train"]["labels"] == {"entailment": 1, "neutral": 1, "contradiction": 1}
    rows = read_ofa_tsv(str(out / "entailment_val.tsv"), "entailment")
    assert [(r["uniq_id"], r["image_id"], r["hypothesis"], r["premise"], r["label"]) for r in rows] == [
        ("2248275918.jpg#3r1e", "2248275918", "Men are outside.", "Two men on a street.", "entailment"),
        ("2248275918.jpg#3r1c", "2248275918", "Men are asleep.", "Two men on a street.", "contradiction"),
        ("1000092795.jpg#0r1n", "1000092795", "The dog is happy.", "A dog runs.", "neutral")]
    assert b64_to_image(rows[2]["image"]).size == (30, 20)


def test_prepare_snli_ve_bad_label_cli(tmp_path):
    data, imgs = write_snli_ve(tmp_path, bad_label=True)
    p = run_cli([sys.executable, os.path.join(REPO, "scripts", "prepare_snli_ve.py"), "--data-dir", data,
                 "--image-dir", imgs, "--out", str(tmp_path / "out")], check=False, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0
    assert "snli_ve_train.jsonl:3: pair 1000092795.jpg#0r1n: gold_label '-' is not one of" in p.stderr
    assert not (tmp_path / "out").exists()


# --- vocabulary for a prepared folder ---------------------------------------------------------

def test_prepare_vl_vocab_and_task_loads(tmp_path):
    """COCO fixture -> caption TSVs -> spm + dict.txt -> the vision_language task loads the test split."""
    import prepare_vl_vocab
    from fairseq_nar_caption.tasks.vision_language import VisionLanguageConfig, VisionLanguageTask

    k = write_karpathy(tmp_path)
    out = tmp_path / "out"
    prepare_vl_coco_caption.main(["--karpathy", k, "--image-root", str(tmp_path / "coco"), "--out", str(out)])
    s = prepare_vl_vocab.main(["--data", str(out), "--tasks", "caption", "--vocab-size", "60", "--num-bins", "16"])
    assert s["train_texts"] == {"caption": 3}
    lines = (out / "dict.txt").read_text().splitlines()
    syms = [line.split()[0] for line in lines]
    assert syms[-19:] == [f"<bin_{i}>" for i in range(16)] + ["<mask>", "<vis>", "<blank>"]
    assert "▁woman" in syms or "▁wo" in syms  # pieces of the training captions
    cfg = VisionLanguageConfig(data=str(out), vl_task="caption", num_bins=16, patch_image_size=32,
                               max_target_positions=128)  # unseen test words split into characters
    task = VisionLanguageTask.setup_task(cfg)
    task.load_dataset("test")
    assert len(task.datasets["test"]) == 1
    assert task.dictionary.index("<bin_15>") != task.dictionary.unk()
