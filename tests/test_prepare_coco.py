"""COCO Karpathy preparation on a small fixture in the real dataset_coco.json format."""
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO, write_h5
from fairseq_nar_caption.data.manifest import eval_item_ids, read_manifest
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

sys.path.insert(0, os.path.join(REPO, "scripts"))
import prepare_coco_karpathy  # noqa: E402

LONG = "a man " * 11  # 22 words > --max-words 20


def sentence(raw, tokens=True):
    s = {"raw": raw, "imgid": 0, "sentid": 0}
    if tokens:
        s["tokens"] = [w.strip(".,!").lower() for w in raw.split() if w.strip(".,!")]
    return s


# (cocoid, split, captions); Karpathy's tokens are lower-cased words without punctuation
IMAGES = [
    (391895, "test", ["A man with a red helmet on a small moped.", "A man riding a moped on a dirt road."]),
    (522418, "train", ["A woman wearing a net on her head cutting a cake.", "A woman cutting a large white cake.",
                       LONG]),
    (184613, "train", ["A child holding a flowered umbrella and petting a yak.", "A young man holding an umbrella."]),
    (318219, "restval", ["A young boy standing in front of a computer keyboard.", "A man cutting a cake."]),
    (554625, "val", ["A boy wearing headphones using one computer.", "..."]),
    (397133, "test", ["A man is in a kitchen making pizzas.", "Man in apron standing on front of oven."]),
]


def write_dataset(path, images=IMAGES, no_tokens=(("184613", 1),)):
    doc = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": f"COCO_val2014_{cid:012d}.jpg", "imgid": k, "split": split,
         "cocoid": cid, "sentids": list(range(len(caps))),
         "sentences": [sentence(c, tokens=(str(cid), j) not in no_tokens) for j, c in enumerate(caps)]}
        for k, (cid, split, caps) in enumerate(images)]}
    path.write_text(json.dumps(doc))


def features(path, ids):
    rng = np.random.default_rng(0)
    write_h5(path, {f"{i}_features": rng.normal(size=(int(rng.integers(3, 7)), 8)).astype("float32") for i in ids})


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_dataset(root / "dataset_coco.json")
    out = root / "data"
    os.makedirs(out)
    features(out / "coco_detections.hdf5", [cid for cid, _, _ in IMAGES])
    summary = prepare_coco_karpathy.main([
        "--annotations", str(root / "dataset_coco.json"), "--out", str(out), "--min-count", "2",
        "--features", str(out / "coco_detections.hdf5"), "--feature-key-template", "%d_features"])
    return out, summary


def test_karpathy_splits_restval_in_train_and_normalised_captions(coco):
    out, summary = coco
    rows = {s: read_manifest(str(out / f"{s}.tsv")) for s in ("train", "val", "test")}
    assert eval_item_ids(rows["train"]) == ["522418", "184613", "318219"]  # restval joins train
    assert eval_item_ids(rows["val"]) == ["554625"]
    assert eval_item_ids(rows["test"]) == ["391895", "397133"]
    # test references: normalised (lower case, no punctuation), every caption kept
    assert [r.caption for r in rows["test"]] == ["a man with a red helmet on a small moped",
                                                 "a man riding a moped on a dirt road",
                                                 "a man is in a kitchen making pizzas",
                                                 "man in apron standing on front of oven"]
    assert all(len(r.pos.split()) == len(r.caption.split()) for s in rows.values() for r in s)
    # "..." normalises to nothing: skipped; the 22-word caption is dropped from training
    assert summary["empty_captions_skipped"] == 1
    assert summary["train_long_dropped"] == 1
    assert summary["captions"] == {"train": 6, "val": 1, "test": 4}


def test_dictionary_min_count_and_unk_in_training_captions(coco):
    out, summary = coco
    counts = dict(line.split() for line in (out / "dict.txt").read_text().splitlines())
    # counted over the kept training captions, words seen >= 2 times (--min-count 2)
    assert counts == {"a": "13", "cake": "3", "cutting": "3", "holding": "2", "man": "2", "umbrella": "2",
                      "woman": "2", "young": "2"}
    train = [r.caption for r in read_manifest(str(out / "train.tsv"))]
    # the entry without tokens is read from its raw text ("A young man holding an umbrella.")
    assert train[3] == "a young man holding <unk> umbrella"
    assert train[1] == "a woman cutting a <unk> <unk> cake"
    assert train[5] == "a man cutting a cake"  # every word frequent enough
    assert summary["train_unk_captions"] == 5


def test_references_and_task_loading_with_the_key_template(coco):
    out, _ = coco
    refs = json.loads((out / "test_refs.json").read_text())
    assert [im["id"] for im in refs["images"]] == ["391895", "397133"]
    assert len(refs["annotations"]) == 4
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(out), feature_files="coco_detections.hdf5",
                                                      feature_key_template="%d_features"))
    for split, n in (("train", 6), ("val", 1), ("test", 2)):
        task.load_dataset(split)
        assert len(task.datasets[split]) == n


def test_missing_features_error_names_file_and_ids(tmp_path):
    write_dataset(tmp_path / "dataset_coco.json")
    features(tmp_path / "f.hdf5", [cid for cid, _, _ in IMAGES if cid != 397133])
    with pytest.raises(SystemExit, match=r"f\.hdf5: 1 of 6 image\(s\) have no 2-D features: "
                                         r"397133 \(key '397133_features'\)"):
        prepare_coco_karpathy.main(["--annotations", str(tmp_path / "dataset_coco.json"), "--out",
                                    str(tmp_path / "out"), "--features", str(tmp_path / "f.hdf5"),
                                    "--feature-key-template", "%d_features"])
    assert not os.path.exists(tmp_path / "out")  # checked before anything is written


def test_bad_annotations(tmp_path):
    write_dataset(tmp_path / "a.json", IMAGES + [(391895, "train", ["a dog"])])
    with pytest.raises(DataError, match=r"a\.json: image 391895: listed twice"):
        prepare_coco_karpathy.prepare(str(tmp_path / "a.json"), str(tmp_path / "out"))
    write_dataset(tmp_path / "a.json", IMAGES[:5] + [(1, "minival", ["a dog"])])
    with pytest.raises(DataError, match=r"a\.json: image 1: split 'minival' is not one of"):
        prepare_coco_karpathy.prepare(str(tmp_path / "a.json"), str(tmp_path / "out"))
    write_dataset(tmp_path / "a.json", [im for im in IMAGES if im[1] != "val"])
    with pytest.raises(DataError, match=r"a\.json: no val images"):
        prepare_coco_karpathy.prepare(str(tmp_path / "a.json"), str(tmp_path / "out"))
