"""The real-language benchmark (data/concepts.py, nar-caption-concepts): built from a slice of COCO
val2014 captions (tests/fixtures/coco_caption, CC BY 4.0), the folder trains with fairseq-train on
the captioning task; the held-out caption is never a reference or a target; the concept set carries
no word order; the detector noise does what it says; bad inputs get one line."""
import collections
import gzip
import json
import os
import sys

import h5py
import numpy as np
import pytest

from conftest import BIN, REPO, USER_DIR, assert_one_line, run_cli
from fairseq_nar_caption.data.concepts import ConceptConfig, Item, concept_features, cooccurrence, detect
from fairseq_nar_caption.data.manifest import read_manifest
from fairseq_nar_caption.data.text import normalize_caption

SLICE = os.path.join(REPO, "tests", "fixtures", "coco_caption", "captions_val2014_fakecap_subset_refs.json.gz")
PROG = "nar-caption-concepts"


def concepts_cli(*args, check=True):
    return run_cli([sys.executable, "-m", "fairseq_nar_caption.cli.concepts", *map(str, args)], check=check)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts")
    captions = root / "captions.json"
    captions.write_bytes(gzip.decompress(open(SLICE, "rb").read()))
    out = root / "coco"
    p = concepts_cli("--captions", captions, "--out", out, "--images", "300,30,40", "--dim", "32",
                     "--min-count", "2")
    return captions, out, p.stdout


def test_the_folder_holds_every_split_and_one_concept_set_per_image(built):
    _, out, stdout = built
    concepts = json.loads((out / "concepts.json").read_text())
    with h5py.File(out / "features.h5", "r") as f:
        for split, n in (("train", 300), ("val", 30), ("test", 40)):
            ids = {r.item_id for r in read_manifest(str(out / f"{split}.tsv"))}
            assert len(ids) == n, split
            for i in ids:
                feats = f[i][()]
                assert feats.dtype == np.float32 and feats.shape == (len(concepts[i]["concepts"]), 32)
                np.testing.assert_array_equal(feats, concept_features(concepts[i]["concepts"], 32))
    assert "train: 300 images" in stdout and "features.h5: one (K, 32) concept set per image" in stdout


def test_the_held_out_caption_is_never_a_reference_or_a_target(built):
    captions, out, _ = built
    doc = json.loads(captions.read_text())
    original = collections.defaultdict(list)
    for a in doc["annotations"]:
        original[str(a["image_id"])].append(normalize_caption(a["caption"]))
    concepts = json.loads((out / "concepts.json").read_text())
    refs = {}
    for split in ("val", "test"):
        coco = json.loads((out / f"{split}_refs.json").read_text())
        for a in coco["annotations"]:
            refs.setdefault(str(a["image_id"]), []).append(a["caption"])
    for r in read_manifest(str(out / "train.tsv")):
        refs.setdefault("train " + r.item_id, []).append(r.caption)
    checked = 0
    for i, c in concepts.items():
        held = c["held_out"]
        kept = refs.get(i) or refs["train " + i]
        # the held-out caption appears exactly as often as other annotators wrote the same words
        assert held in original[i] and kept.count(held) == original[i].count(held) - 1, i
        if i in {k for k in refs if not k.startswith("train ")}:
            assert len(kept) == len(original[i]) - 1  # every other caption is a reference
        checked += 1
    assert checked == 370
    for split, n in (("val", 30), ("test", 40)):  # the human reference point, as a COCO results file
        results = json.loads((out / f"{split}_held_out.json").read_text())
        assert len(results) == n and all(concepts[r["image_id"]]["held_out"] == r["caption"] for r in results)


def test_the_folder_trains_with_fairseq_train_on_the_captioning_task(built, tmp_path):
    _, out, _ = built
    p = run_cli([os.path.join(BIN, "fairseq-train"), out, "--user-dir", USER_DIR, "--task", "captioning",
                 "--arch", "ar_caption_tiny", "--embed-dim", "32", "--ffn-embed-dim", "64", "--attention-heads", "2",
                 "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
                 "--batch-size", "64", "--max-update", "4", "--valid-subset", "val", "--no-epoch-checkpoints",
                 "--save-dir", tmp_path / "ar", "--cpu", "--num-workers", "0"],
                env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert (tmp_path / "ar" / "checkpoint_last.pt").is_file()
    assert "valid on 'val' subset" in p.stdout + p.stderr


def test_two_orderings_of_one_caption_give_the_same_features(tmp_path):
    first = "a red car parked next to a white dog"
    second = "a white dog parked next to a red car"
    feats = []
    for name, caption in (("one", first), ("two", second)):
        doc = {"images": [{"id": i} for i in range(1, 5)],
               "annotations": [{"image_id": i, "id": 10 * i + k, "caption": caption if k == 0 else f"dog {k} {i}"}
                               for i in range(1, 5) for k in range(2)]}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        concepts_cli("--captions", path, "--out", tmp_path / name, "--images", "2,1,1", "--dim", "8",
                     "--min-count", "1")
        held = json.loads((tmp_path / name / "concepts.json").read_text())
        with h5py.File(tmp_path / name / "features.h5", "r") as f:
            feats.append({i: (held[i]["held_out"] == caption, f[i][()]) for i in f})
    assert sum(ordered for ordered, _ in feats[0].values()) >= 1  # an ordered caption was held out
    for i, (ordered, array) in feats[0].items():
        assert feats[1][i][0] == ordered
        np.testing.assert_array_equal(array, feats[1][i][1])


def test_detector_noise_drops_and_adds_only_training_co_occurrences():
    train = [Item(str(i), "", [], c) for i, c in enumerate([["dog", "frisbee", "grass"], ["dog", "park"],
                                                            ["cat", "sofa"]])]
    co = cooccurrence(train)
    item = Item("7", "", [], ["dog", "grass"])
    clean = detect(item, co, ConceptConfig(distractors=0))
    assert clean == ["dog", "grass"]
    noisy = detect(item, co, ConceptConfig(distractors=5))
    # dog co-occurs with frisbee, grass, park; grass with dog, frisbee: never cat / sofa, never a present one
    assert set(noisy) - {"dog", "grass"} == {"frisbee", "park"}
    assert detect(item, co, ConceptConfig(distractors=5)) == noisy  # deterministic in seed and id
    dropped = [detect(Item(str(i), "", [], ["a", "b", "c", "d"]), {}, ConceptConfig(drop=0.5)) for i in range(200)]
    assert all(1 <= len(d) <= 4 for d in dropped)  # one concept always kept
    assert 1.6 < np.mean([len(d) for d in dropped]) < 2.6  # about half of four


def test_bad_inputs_are_one_line_and_nothing_is_written(built, tmp_path):
    captions, _, _ = built
    not_coco = tmp_path / "x.json"
    not_coco.write_text(json.dumps({"images": []}))
    assert_one_line(concepts_cli("--captions", not_coco, "--out", tmp_path / "o1", check=False), PROG,
                    str(not_coco), "'annotations'")
    p = concepts_cli("--captions", captions, "--out", tmp_path / "o2", "--images", "900,100,100", check=False)
    assert_one_line(p, PROG, "1100 images requested", "only")
    assert not (tmp_path / "o2").exists()
    assert_one_line(concepts_cli("--captions", captions, "--out", tmp_path / "o3", "--images", "5,5", check=False),
                    PROG, "--images", status=2)
    assert_one_line(concepts_cli("--captions", captions, "--out", tmp_path / "o3", "--drop", "1", check=False),
                    PROG, "--drop", status=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "features.h5").write_bytes(b"the user's own file")
    p = concepts_cli("--captions", captions, "--out", mine, "--images", "5,2,2", check=False)
    assert_one_line(p, PROG, "features.h5", "--overwrite")
    assert (mine / "features.h5").read_bytes() == b"the user's own file" and sorted(os.listdir(mine)) == ["features.h5"]
