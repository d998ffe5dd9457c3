"""Video corpora: NACF frame sampling and the MSR-VTT / MSVD preparation scripts,
on small fixtures written in the release formats."""
import csv
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO, write_h5
from fairseq_nar_caption.data.caption_dataset import CaptionDataset
from fairseq_nar_caption.data.feature_store import HDF5FeatureStore, MultiModalFeatures, open_feature_store
from fairseq_nar_caption.data.frame_sampling import FrameSampledStore, segment_frame_indices
from fairseq_nar_caption.data.manifest import eval_item_ids, read_manifest
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

sys.path.insert(0, os.path.join(REPO, "scripts"))
import prepare_msrvtt  # noqa: E402
import prepare_msvd  # noqa: E402

D = 16


def frame_numbers(t):
    """(t, 3) features whose row i holds i: a sampled array shows its frame indices."""
    return np.repeat(np.arange(t, dtype=np.float32)[:, None], 3, axis=1)


def video_features(path, ids, seed=0):
    rng = np.random.default_rng(seed)
    write_h5(path, {i: rng.normal(size=(int(rng.integers(3, 12)), D)).astype("float32") for i in ids})


# --- frame sampling -------------------------------------------------------------

def test_centre_frames_t20_k8(tmp_path):
    # segments floor(linspace(0, 20, 9)) = 0 2 5 7 10 12 15 17 20; centres (a + b) // 2
    expected = [1, 3, 6, 8, 11, 13, 16, 18]
    assert segment_frame_indices(20, 8).tolist() == expected
    write_h5(tmp_path / "f.h5", {"v": frame_numbers(20)})
    store = FrameSampledStore(HDF5FeatureStore(str(tmp_path / "f.h5")), 8, "centre")
    assert store.get("v")[:, 0].tolist() == expected
    assert store.shape("v") == store.peek_shape() == store.validate(["v"]) == (8, 3)
    assert store.key("v") == "v" and store.path == str(tmp_path / "f.h5")


def test_random_frames_stay_in_their_segment_and_vary(tmp_path):
    bounds = [0, 2, 5, 7, 10, 12, 15, 17, 20]
    write_h5(tmp_path / "f.h5", {"v": frame_numbers(20)})

    def draws(epoch=1, n=30):
        store = FrameSampledStore(HDF5FeatureStore(str(tmp_path / "f.h5")), 8, "random", seed=3)
        store.set_epoch(epoch)
        return [tuple(store.get("v")[:, 0].astype(int)) for _ in range(n)]

    seqs = draws()
    for idx in seqs:
        assert all(bounds[i] <= f < bounds[i + 1] for i, f in enumerate(idx))
    assert len(set(seqs)) > 10  # a fresh draw per get
    assert draws() == seqs  # reproducible from seed, epoch and the per-item get count
    assert draws(epoch=2) != seqs


def test_short_video_is_resampled_not_padded(tmp_path):
    write_h5(tmp_path / "f.h5", {"v": frame_numbers(5)})
    for mode in ("centre", "random"):
        store = FrameSampledStore(HDF5FeatureStore(str(tmp_path / "f.h5")), 8, mode)
        assert store.get("v")[:, 0].tolist() == [0, 1, 1, 2, 2, 3, 3, 4]


def test_nan_or_no_frames_error_names_file_and_item(tmp_path):
    bad = frame_numbers(20)
    bad[4, 1] = np.nan  # frame 4 is not among the centre frames: all frames are checked
    write_h5(tmp_path / "f.h5", {"ok": frame_numbers(20), "bad": bad, "empty": np.zeros((0, 3), "f")})
    store = FrameSampledStore(HDF5FeatureStore(str(tmp_path / "f.h5")), 8, "centre")
    with pytest.raises(DataError, match=r"f\.h5: item bad: 1 NaN/Inf"):
        store.validate(["ok", "bad"])
    with pytest.raises(DataError, match=r"f\.h5: item bad: 1 NaN/Inf"):
        store.get("bad")
    with pytest.raises(DataError, match=r"f\.h5: item empty: no frames"):
        store.validate(["ok", "empty"], check="lazy")
    with pytest.raises(DataError, match=r"f\.h5: item gone: no features"):
        store.get("gone")


# --- MSR-VTT --------------------------------------------------------------------

LONG_TRAIN = " ".join(["a man is playing a guitar"] * 5)  # 30 words: over --max-words 29
LONG_VAL = " ".join(["a woman is cooking some food in a kitchen"] * 4)  # 36 words
MSRVTT_VIDEOS = [("video0", "train", 3), ("video1", "train", 5), ("video2", "train", 0),
                 ("video3", "validate", 19), ("video4", "test", 7), ("video5", "test", 2)]
MSRVTT_SENTENCES = {
    "video0": ["A MAN is playing a guitar.", "a man's playing the banjo", "A man plays guitar!", LONG_TRAIN],
    "video1": ["a man is singing", "Someone sings a song.", "a man is playing the banjo", "..."],
    "video2": ["a man is playing guitar", "a man is talking", "a dog is running", "a dog runs"],
    "video3": [LONG_VAL, "A woman is cooking.", "a woman cooks food", "someone is in a kitchen"],
    "video4": ["a cat is sleeping", "a cat sleeps on a sofa", "a kitten is resting", "a cat naps"],
    "video5": ["Cars race on a track", "cars are racing", "a car race", "vehicles drive fast"],
}


def write_videodatainfo(path, videos=MSRVTT_VIDEOS, sentences=MSRVTT_SENTENCES):
    doc = {"info": {"year": "2016"},
           "videos": [{"id": int(v[5:]), "video_id": v, "category": c, "split": s, "url": "", "start time": 0.0,
                       "end time": 10.0} for v, s, c in videos],
           "sentences": [{"sen_id": k, "video_id": v, "caption": c}
                         for k, (v, c) in enumerate((v, c) for v, caps in sentences.items() for c in caps)]}
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory):
    """The MSR-VTT fixture prepared once: (folder, summary)."""
    root = tmp_path_factory.mktemp("msrvtt")
    write_videodatainfo(root / "videodatainfo.json")
    out = root / "data"
    os.makedirs(out)
    ids = [v for v, _, _ in MSRVTT_VIDEOS]
    video_features(out / "a.hdf5", ids, seed=1)
    video_features(out / "b.hdf5", ids, seed=2)
    summary = prepare_msrvtt.main(["--annotations", str(root / "videodatainfo.json"), "--out", str(out),
                                   "--features", f"{out / 'a.hdf5'},{out / 'b.hdf5'}"])
    return out, summary


def test_msrvtt_manifests_splits_and_normalisation(msrvtt):
    out, summary = msrvtt
    rows = {s: read_manifest(str(out / f"{s}.tsv")) for s in ("train", "val", "test")}
    assert eval_item_ids(rows["train"]) == ["video0", "video1", "video2"]
    assert eval_item_ids(rows["val"]) == ["video3"]
    assert eval_item_ids(rows["test"]) == ["video4", "video5"]
    category = {v: c for v, _, c in MSRVTT_VIDEOS}
    for split_rows in rows.values():
        for r in split_rows:
            assert r.category == category[r.item_id]
            assert len(r.pos.split()) == len(r.caption.split())
    train = [r.caption for r in rows["train"]]
    # normalised ("A MAN", "man's", "guitar!"), then words seen < 3 times in training -> <unk>
    assert train[:3] == ["a man is playing a guitar", "a <unk> playing <unk> <unk>", "a man <unk> guitar"]
    assert rows["train"][1].pos == "DT NNS VBG DT NN"  # tags of the original words "a mans playing the banjo"
    assert rows["test"][0].caption == "a cat is sleeping" and rows["test"][0].pos == "DT NN VBZ VBG"
    assert rows["test"][4].caption == "cars race on a track"
    # "..." is empty once normalised: skipped; the 30-word caption is dropped from training
    assert summary["captions"] == {"train": 10, "val": 4, "test": 8}
    assert summary["train_long_dropped"] == 1 and LONG_TRAIN not in train


def test_msrvtt_dictionary_from_train_with_threshold(msrvtt):
    out, summary = msrvtt
    counts = dict(line.split() for line in (out / "dict.txt").read_text().splitlines())
    # counted over the kept training captions; "dog", "the", "banjo" (2 each) are below --min-count 3;
    # "cat" and "woman" occur in test / val only
    assert counts == {"a": "11", "man": "6", "is": "6", "playing": "4", "guitar": "3"}
    assert summary["vocab"] == 5
    train_words = {w for r in read_manifest(str(out / "train.tsv")) for w in r.caption.split()}
    assert train_words - set(counts) == {"<unk>"}
    assert summary["train_unk_captions"] == 8 and summary["train_unk_tokens"] == 15


def test_msrvtt_references_keep_every_caption_in_eval_order(msrvtt):
    out, summary = msrvtt
    for split in ("val", "test"):
        refs = json.loads((out / f"{split}_refs.json").read_text())
        rows = read_manifest(str(out / f"{split}.tsv"))
        assert [im["id"] for im in refs["images"]] == eval_item_ids(rows)
        assert [(a["image_id"], a["caption"]) for a in refs["annotations"]] == [(r.item_id, r.caption) for r in rows]
    val = [r.caption for r in read_manifest(str(out / "val.tsv"))]
    # the over-long reference is kept, behind the first caption the task can use as a loss target
    assert val == ["a woman is cooking", LONG_VAL, "a woman cooks food", "someone is in a kitchen"]
    assert summary["eval_items_all_long"] == []


def test_msrvtt_folder_loads_in_captioning_task(msrvtt):
    out, _ = msrvtt
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(out), feature_files="a.hdf5,b.hdf5",
                                                      feature_key_template="{}"))
    for split, n in (("train", 10), ("val", 1), ("test", 2)):
        task.load_dataset(split)
        assert len(task.datasets[split]) == n
    assert task.datasets["train"][0]["features"].shape[1] == D


def test_frame_sampled_stores_in_caption_dataset(msrvtt):
    """How the task would use frame sampling: K frames per modality, 2K tokens per video."""
    out, _ = msrvtt
    d = CaptioningTask.load_dictionary(str(out / "dict.txt"))
    feats = MultiModalFeatures([FrameSampledStore(open_feature_store(str(out / f)), 8, "random", seed=1)
                                for f in ("a.hdf5", "b.hdf5")])
    ds = CaptionDataset(read_manifest(str(out / "train.tsv")), str(out / "train.tsv"), feats, d)
    assert ds.tokens_per_modality == [8, 8] and set(ds.src_sizes.tolist()) == {16}
    assert tuple(ds[0]["features"].shape) == (16, D)


def test_msrvtt_missing_features_error_names_file_and_ids(tmp_path):
    write_videodatainfo(tmp_path / "info.json")
    video_features(tmp_path / "a.hdf5", ["video0", "video1", "video2", "video3", "video4"])
    with pytest.raises(SystemExit, match=r"a\.hdf5: 1 of 6 video\(s\) have no 2-D features: video5"):
        prepare_msrvtt.main(["--annotations", str(tmp_path / "info.json"), "--out", str(tmp_path / "out"),
                             "--features", str(tmp_path / "a.hdf5")])
    assert not os.path.exists(tmp_path / "out")  # checked before anything is written


def test_msrvtt_bad_annotations(tmp_path):
    write_videodatainfo(tmp_path / "info.json", sentences={**MSRVTT_SENTENCES, "video9": ["a dog"]})
    with pytest.raises(DataError, match=r"info\.json: sentences\[24\]: video video9 is not in any 'videos' list"):
        prepare_msrvtt.prepare([str(tmp_path / "info.json")], str(tmp_path / "out"))
    write_videodatainfo(tmp_path / "info.json", videos=MSRVTT_VIDEOS[:4] + [("video4", "test", 20)])
    with pytest.raises(DataError, match=r"info\.json: video video4: category 20 outside 0-19"):
        prepare_msrvtt.prepare([str(tmp_path / "info.json")], str(tmp_path / "out"))


# --- MSVD -----------------------------------------------------------------------

MSVD_CLIPS = [("abc_1_5", 1), ("x-y_Z_0_10", 2), ("def_3_9", 3), ("ghi_0_4", 1201), ("jkl_2_8", 1301),
              ("mno_5_6", 1970)]
MSVD_CAPTIONS = {
    "abc_1_5": ["A squirrel is eating a peanut in it's shell.", "a squirrel eats", "!!!"],
    "x-y_Z_0_10": ["A man is slicing a tomato.", "someone slices tomatoes, quickly",
                   " ".join(["a man is cutting a tomato"] * 4)],  # 24 words: over --max-words 19
    "def_3_9": ["a woman is dancing", "the girl dances"],
    "ghi_0_4": ["a cat plays the piano", "a kitten plays a keyboard"],
    "jkl_2_8": ["a man rides a horse", "someone is horse riding"],
    "mno_5_6": ["two men fight", "men are boxing"],
    "zzz_9_9": ["a clip the mapping does not know"],
}


def write_msvd(folder, captions=MSVD_CAPTIONS, clips=MSVD_CLIPS):
    (folder / "youtube_mapping.txt").write_text("".join(f"{c} vid{n}\n" for c, n in clips))
    lines = ["###############", "# Microsoft Research Video Description Corpus", "# english descriptions", ""]
    lines += [f"{clip} {c}" for clip, caps in captions.items() for c in caps]
    (folder / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    with open(folder / "MSR Video Description Corpus.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"])
        for clip, caps in captions.items():
            vid, start, end = clip.rsplit("_", 2)
            w.writerow([vid, start, end, 7, "clean", 30, "Spanish", "un hombre"])
            for c in caps:
                w.writerow([vid, start, end, 7, "clean", 30, "English", c])


def run_msvd(folder, annotations="AllVideoDescriptions.txt", out="out", *extra):
    return prepare_msvd.main(["--annotations", str(folder / annotations), "--mapping",
                              str(folder / "youtube_mapping.txt"), "--out", str(folder / out), *extra])


def test_msvd_splits_keys_and_vocab(tmp_path, capsys):
    write_msvd(tmp_path)
    summary = run_msvd(tmp_path)
    out = tmp_path / "out"
    rows = {s: read_manifest(str(out / f"{s}.tsv")) for s in ("train", "val", "test")}
    # vid<N> -> video<N-1>, the NACF reference's keys; standard split by N
    assert eval_item_ids(rows["train"]) == ["video0", "video1", "video2"]
    assert eval_item_ids(rows["val"]) == ["video1200"]
    assert eval_item_ids(rows["test"]) == ["video1300", "video1969"]
    assert all(r.category is None and len(r.pos.split()) == len(r.caption.split()) for s in rows for r in rows[s])
    assert rows["train"][0].caption == "a squirrel is eating a peanut in its shell"
    assert [r.caption for r in rows["train"] if r.item_id == "video1"] == ["a man is slicing a tomato",
                                                                           "someone slices tomatoes quickly"]
    counts = dict(line.split() for line in (out / "dict.txt").read_text().splitlines())
    assert counts["squirrel"] == "2" and counts["shell"] == "1" and "cat" not in counts  # every train word only
    assert summary["train_long_dropped"] == 1 and summary["train_unk_captions"] == 0
    refs = json.loads((out / "test_refs.json").read_text())
    assert [im["id"] for im in refs["images"]] == ["video1300", "video1969"] and len(refs["annotations"]) == 4
    printed = capsys.readouterr().out
    assert "not in youtube_mapping.txt, skipped: 1 clips, 1 captions (zzz_9_9)" in printed
    assert "captions empty after normalisation, skipped: 1" in printed

    # the CSV release gives the same corpus (English rows only)
    run_msvd(tmp_path, "MSR Video Description Corpus.csv", "out_csv")
    for name in ("train.tsv", "val.tsv", "test.tsv", "dict.txt", "val_refs.json", "test_refs.json"):
        assert (out / name).read_text() == (tmp_path / "out_csv" / name).read_text()

    # the mapping file's own names, and the task loads the folder
    run_msvd(tmp_path, "AllVideoDescriptions.txt", "out_vid", "--key-prefix", "vid", "--first-index", "1")
    ids = [f"vid{n}" for _, n in MSVD_CLIPS]
    assert eval_item_ids(read_manifest(str(tmp_path / "out_vid" / "test.tsv"))) == ["vid1301", "vid1970"]
    video_features(tmp_path / "out_vid" / "a.hdf5", ids, seed=3)
    video_features(tmp_path / "out_vid" / "b.hdf5", ids, seed=4)
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(tmp_path / "out_vid"),
                                                      feature_files="a.hdf5,b.hdf5", feature_key_template="{}"))
    task.load_dataset("train")
    task.load_dataset("test")
    assert len(task.datasets["train"]) == 6 and len(task.datasets["test"]) == 2


def test_msvd_mapped_clip_without_caption_is_an_error(tmp_path):
    write_msvd(tmp_path, captions={k: v for k, v in MSVD_CAPTIONS.items() if k != "def_3_9"})
    with pytest.raises(SystemExit, match=r"AllVideoDescriptions\.txt: 1 clip\(s\) of .*youtube_mapping\.txt "
                                         r"have no English caption: vid3 \(def_3_9\)"):
        run_msvd(tmp_path)


def test_msvd_bad_mapping_line(tmp_path):
    write_msvd(tmp_path, clips=MSVD_CLIPS + [("pqr_1_2", 1971)])
    with pytest.raises(SystemExit, match=r"youtube_mapping\.txt:7: vid1971 outside the standard split"):
        run_msvd(tmp_path)
