"""The toy benchmark generator, the caption text path and the offline NLTK tagger."""
import csv
import filecmp
import json
import os
import re
import sys

import h5py
import nltk
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from fairseq_nar_caption.cli.make_toy_data import cli_main
from fairseq_nar_caption.data import manifest, text
from fairseq_nar_caption.data.toy import ToyConfig, generate
from fairseq_nar_caption.data.toy import features as toy_features
from fairseq_nar_caption.data.toy.captions import SHAPE_NOUNS
from fairseq_nar_caption.data.toy.render import COLOURS
from fairseq_nar_caption.errors import OutputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ToyConfig(seed=1, n_images=(40, 10, 10), n_videos=(20, 5, 5), feature_dim=128)
SPLITS = ("train", "val", "test")
CHECK_SENTENCE = "a man is driving a jeep down the road"
CHECK_TAGGED = "a/DT man/NN is/VBZ driving/VBG a/DT jeep/NN down/IN the/DT road/NN"


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy") / "data")
    assert generate(out, SMALL, log=quiet)
    return out


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def captions_by_item(path):
    caps = {}
    for row in manifest.read_manifest(path):
        caps.setdefault(row.item_id, []).append(row.caption)
    return caps


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tree_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# --------------------------------------------------------------------------- tagger and text
def test_tagger_install_script(tmp_path):
    script = os.path.join(REPO, "scripts", "install_nltk_tagger.py")
    first = run_cli([sys.executable, script, str(tmp_path)])
    assert "wrote" in first.stdout
    again = run_cli([sys.executable, script, str(tmp_path)])
    assert "up to date" in again.stdout
    # nltk finds the new files first through NLTK_DATA and tags the documented sentence.
    probe = ("import nltk; print(nltk.data.find('taggers/averaged_perceptron_tagger_eng/'));"
             f"print(' '.join(w + '/' + t for w, t in nltk.pos_tag({CHECK_SENTENCE!r}.split())))")
    env = dict(os.environ, NLTK_DATA=str(tmp_path))
    found, tagged = run_cli([sys.executable, "-c", probe], env=env).stdout.splitlines()
    assert found.startswith(str(tmp_path))
    assert tagged == CHECK_TAGGED


def test_installed_tagger_needs_no_env_var(monkeypatch):
    monkeypatch.delenv("NLTK_DATA", raising=False)
    tagged = " ".join(f"{w}/{t}" for w, t in nltk.pos_tag(CHECK_SENTENCE.split()))
    assert tagged == CHECK_TAGGED
    assert text.pos_tag_captions([CHECK_SENTENCE.split()]) == [[t.split("/")[1] for t in CHECK_TAGGED.split()]]


def test_missing_tagger_data_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    text._tagger.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="make test"):
            text.pos_tag_captions([["a", "dog"]])
    finally:
        text._tagger.cache_clear()


def test_normalize_caption():
    assert text.normalize_caption("  A Man's T-shirt,\tis “red”!  ") == "a mans tshirt is red"
    assert text.normalize_caption("Two dogs... (playing)") == "two dogs playing"


def test_pos_tag_captions_rejects_strings():
    with pytest.raises(TypeError, match="caption.split"):
        text.pos_tag_captions(["a red ball"])


def test_build_dictionary(tmp_path):
    path = str(tmp_path / "dict.txt")
    entries = text.build_dictionary(["a b b", "c b a", "d"], path)
    assert entries == [("b", 3), ("a", 2), ("c", 1), ("d", 1)]
    with open(path) as f:
        assert f.read() == "b 3\na 2\nc 1\nd 1\n"
    assert text.build_dictionary(["a b b", "c b a", "d"], path, min_count=2) == [("b", 3), ("a", 2)]
    with pytest.raises(manifest.DataError, match="dict.txt"):
        text.build_dictionary([], path)


# --------------------------------------------------------------------------- generation
def test_deterministic_and_seed_dependent(toy, tmp_path):
    same = str(tmp_path / "same")
    generate(same, SMALL, log=quiet)
    files = tree_files(toy)
    assert files == tree_files(same)
    _, mismatch, errors = filecmp.cmpfiles(toy, same, files, shallow=False)
    assert not mismatch and not errors  # byte-identical, HDF5 and PNG included

    other = str(tmp_path / "other")
    generate(other, ToyConfig(seed=2, n_images=SMALL.n_images, n_videos=SMALL.n_videos), log=quiet)
    for rel in ("images/train.tsv", "videos/train.tsv", "images/scenes.json", "images/pixels/1.png"):
        assert not filecmp.cmp(os.path.join(toy, rel), os.path.join(other, rel), shallow=False), rel
    with h5py.File(os.path.join(toy, "images/features.h5")) as a, h5py.File(os.path.join(other, "images/features.h5")) as b:
        assert not np.array_equal(a["1"][()], b["1"][()])


def test_skips_when_up_to_date(toy, tmp_path, capsys):
    stamp = os.path.join(toy, "stamp.json")
    before = os.stat(stamp).st_mtime_ns
    assert generate(toy, SMALL, log=print) is False
    assert "up to date" in capsys.readouterr().out
    assert os.stat(stamp).st_mtime_ns == before

    out = str(tmp_path / "cli")
    args = ["--out", out, "--n-images-train", "4", "--n-images-val", "2", "--n-images-test", "2",
            "--n-videos-train", "2", "--n-videos-val", "1", "--n-videos-test", "1"]
    cli_main(args)
    assert "done" in capsys.readouterr().out
    cli_main(args)
    assert "up to date" in capsys.readouterr().out
    cli_main(args + ["--seed", "3"])  # other arguments: regenerated in place
    assert load_json(os.path.join(out, "stamp.json"))["seed"] == 3
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp folders left


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError, match="--force"):
        generate(str(tmp_path), SMALL, log=quiet)
    assert (tmp_path / "mine.txt").exists()


def test_features(toy):
    for split, n in zip(SPLITS, SMALL.n_images):
        assert len(captions_by_item(os.path.join(toy, f"images/{split}.tsv"))) == n
    image_ids = [str(i) for i in range(1, sum(SMALL.n_images) + 1)]
    with h5py.File(os.path.join(toy, "images/features.h5")) as f:
        assert sorted(f.keys()) == sorted(image_ids)
        for key in image_ids:
            feat = f[key][()]
            assert feat.shape == (64, SMALL.feature_dim) and feat.dtype == np.float32
            assert np.isfinite(feat).all()
        # A function of the stored pixels: recomputing from the PNG gives the same array.
        pixels = np.asarray(Image.open(os.path.join(toy, "images/pixels/7.png")))
        assert pixels.shape == (96, 96, 3)
        np.testing.assert_array_equal(toy_features.image_features(pixels[None], SMALL.feature_dim)[0], f["7"][()])
    video_ids = [f"video{i}" for i in range(sum(SMALL.n_videos))]
    for name in ("appearance", "motion"):
        with h5py.File(os.path.join(toy, f"videos/{name}.h5")) as f:
            assert sorted(f.keys()) == sorted(video_ids)
            for key in video_ids:
                feat = f[key][()]
                assert feat.shape == (8, SMALL.feature_dim) and feat.dtype == np.float32
                assert np.isfinite(feat).all()
                if name == "motion":
                    assert (np.abs(feat).sum(axis=1) > 0).all()  # every step is a real difference


def test_captions(toy):
    for modality, per_item in (("images", 5), ("videos", 10)):
        for split in SPLITS:
            for item, caps in captions_by_item(os.path.join(toy, f"{modality}/{split}.tsv")).items():
                if modality == "images":
                    assert len(caps) == per_item and len(set(caps)) >= 2, item
                else:
                    assert len(caps) >= per_item, item
                for c in caps:
                    assert c == text.normalize_caption(c) and 4 <= len(c.split()) <= 20, (item, c)


def test_refs_follow_manifest_order(toy):
    for modality in ("images", "videos"):
        for split in ("val", "test"):
            rows = manifest.read_manifest(os.path.join(toy, f"{modality}/{split}.tsv"))
            refs = load_json(os.path.join(toy, f"{modality}/{split}_refs.json"))
            assert refs["type"] == "captions" and refs["licenses"] == []
            assert [img["id"] for img in refs["images"]] == manifest.eval_item_ids(rows)
            assert [(a["image_id"], a["caption"]) for a in refs["annotations"]] == [(r.item_id, r.caption) for r in rows]
            assert len({a["id"] for a in refs["annotations"]}) == len(rows)


def test_dictionary_from_train_only(toy):
    for modality in ("images", "videos"):
        words = {}
        for split in SPLITS:
            rows = manifest.read_manifest(os.path.join(toy, f"{modality}/{split}.tsv"))
            words[split] = {w for r in rows for w in r.caption.split()}
        with open(os.path.join(toy, f"{modality}/dict.txt")) as f:
            entries = [line.split() for line in f]
        assert {w for w, _ in entries} == words["train"]
        counts = [int(c) for _, c in entries]
        assert counts == sorted(counts, reverse=True)
    # With these sizes some val/test words never occur in train; they must be absent.
    assert (words["val"] | words["test"]) - words["train"]


def test_pos_column_comes_from_nltk(toy):
    rows = manifest.read_manifest(os.path.join(toy, "videos/train.tsv"))
    assert all(r.pos is not None for r in rows)
    assert rows[0].pos == " ".join(t for _, t in nltk.pos_tag(rows[0].caption.split()))
    assert [r.pos.split() for r in rows] == text.pos_tag_captions([r.caption.split() for r in rows])


def test_grounding_boxes_match_scene_objects(toy):
    scenes = load_json(os.path.join(toy, "images/scenes.json"))
    synonyms = {w: shape for shape, words in SHAPE_NOUNS.items() for w in words}
    for split in SPLITS:
        header, rows = read_tsv(os.path.join(toy, f"images/grounding_{split}.tsv"))
        assert header == ["uniq_id", "image_id", "text", "box"]
        for uniq_id, image_id, expression, box in rows:
            x0, y0, x1, y1 = map(int, box.split(","))
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96, uniq_id
            matches = [o for o in scenes[image_id] if o["box"] == [x0, y0, x1, y1]]
            assert len(matches) == 1, uniq_id
            obj, words = matches[0], expression.split()
            assert all(w == obj["colour"] for w in words if w in COLOURS), (uniq_id, expression)
            named = [synonyms[w] for w in words if w in synonyms] + (["cross"] if "plus" in words else [])
            assert all(s == obj["shape"] for s in named), (uniq_id, expression)


def test_vqa_answers_match_scenes(toy):
    scenes = load_json(os.path.join(toy, "images/scenes.json"))
    plurals = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star",
               "crosses": "cross", "diamonds": "diamond"}
    counted = 0
    for split in SPLITS:
        header, rows = read_tsv(os.path.join(toy, f"images/vqa_{split}.tsv"))
        assert header == ["uniq_id", "image_id", "question", "answers"]
        for _, image_id, question, answers in rows:
            parsed = [a.split("|!+") for a in answers.split("&&")]
            assert all(conf == "1.0" and ans for conf, ans in parsed), answers
            objs = scenes[image_id]
            m = re.fullmatch(r"how many (\w+)(?: shapes)? are there\?", question)
            if m:
                word = m.group(1)
                if word == "shapes":
                    expected = len(objs)
                elif word in plurals:
                    expected = sum(o["shape"] == plurals[word] for o in objs)
                else:
                    expected = sum(o["colour"] == word for o in objs)
                assert parsed[0][1] == str(expected), (image_id, question, answers)
                counted += 1
    assert counted > 5


def test_entailment_labels(toy):
    labels = []
    for split in SPLITS:
        header, rows = read_tsv(os.path.join(toy, f"images/entailment_{split}.tsv"))
        assert header == ["uniq_id", "image_id", "hypothesis", "label"]
        labels += [r[3] for r in rows]
    assert set(labels) == {"entailment", "neutral", "contradiction"}
