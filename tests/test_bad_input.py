"""Bad inputs through the real entry points: each gets one clear line naming the file and the
item, a non-zero exit, and nothing half-written (issue 11).  Fixture trainings are tiny
(a 16-wide AR model, a few updates, 24 items of 4 x 8 features)."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import BIN, REPO, USER_DIR, run_cli, write_h5, write_tsv
from fairseq_nar_caption.errors import DataError

ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")
ONE_THREAD.pop("NAR_CAPTION_TRACEBACK", None)
CAPTIONS = ["a red circle", "a blue square"]
MODEL = ["--arch", "ar_caption_tiny", "--embed-dim", "16", "--ffn-embed-dim", "16", "--encoder-layers", "1",
         "--decoder-layers", "1", "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
         "--batch-size", "4", "--disable-validation", "--seed", "1", "--cpu", "--no-progress-bar"]


def make_data(folder, n=24, dim=8, feats=None):
    """``n`` items of (4, dim) features in features.h5 (``feats`` overrides some), manifests, dict.txt."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {str(i): rng.normal(size=(4, dim)).astype("float32") for i in range(n)}
    arrays.update(feats or {})
    write_h5(os.path.join(folder, "features.h5"), arrays)
    splits = [("train", range(0, n - 8)), ("val", range(n - 8, n - 4)), ("test", range(n - 4, n))]
    for split, ids in splits:
        write_tsv(os.path.join(folder, f"{split}.tsv"), [(str(i), CAPTIONS[i % 2]) for i in ids])
    with open(os.path.join(folder, "dict.txt"), "w") as f:
        f.write("".join(f"{w} 1\n" for w in "a red circle blue square".split()))
    return folder


def train(data, save, *extra, max_update=4, check=True, env=ONE_THREAD, timeout=300):
    return run_cli([os.path.join(BIN, "fairseq-train"), data, "--user-dir", USER_DIR, "--task", "captioning",
                    *MODEL, "--max-update", str(max_update), "--save-dir", save, *extra],
                   check=check, env=env, timeout=timeout)


def generate(data, ckpt, *extra, check=True, env=ONE_THREAD):
    return run_cli([os.path.join(BIN, "fairseq-generate"), data, "--user-dir", USER_DIR, "--task", "captioning",
                    "--path", ckpt, "--gen-subset", "test", "--beam", "2", "--batch-size", "4", "--cpu", *extra],
                   check=check, env=env, timeout=300)


def last_line(p):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(p, prog, *fragments):
    """Exit non-zero, the last stderr line is '<prog>: error: ...' holding every fragment, no traceback."""
    assert p.returncode != 0, p.stderr[-2000:]
    line = last_line(p)
    assert line.startswith(f"{prog}: error: "), p.stderr[-2000:]
    for frag in fragments:
        assert frag in line, line
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "weights_only=False" not in p.stderr
    return line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    data = make_data(str(root / "data"))
    save = str(root / "ckpt")
    train(data, save)
    return data, os.path.join(save, "checkpoint_last.pt")


# --------------------------------------------------------------------------- item 0: trainings end
def test_short_hdf5_trainings_start_and_end_in_time(tmp_path):
    """Three short trainings over HDF5 features (with a DataLoader worker, fairseq's default) each
    exit 0 well inside the timeout: nothing hangs at interpreter exit.  Their stderr is free of the
    framework's deprecation chatter."""
    data = make_data(str(tmp_path / "data"))
    for k in range(3):
        save = str(tmp_path / f"ckpt{k}")
        p = train(data, save, "--num-workers", "1", max_update=2, timeout=240)
        assert p.returncode == 0
        assert os.path.isfile(os.path.join(save, "checkpoint_last.pt"))
        assert "Warning" not in p.stderr, [ln for ln in p.stderr.splitlines() if "Warning" in ln]


# --------------------------------------------------------------------------- item 1: exit 0 on success
def test_every_console_entry_is_installed_and_exits_zero_on_help():
    """Every entry of setup.py is installed; its function (what the installed script calls) exits 0
    on --help (in this process: one fairseq import for all).  Real runs of table, baselines and
    benchmark through the installed scripts follow."""
    import re
    from importlib import import_module

    with open(os.path.join(REPO, "setup.py")) as f:
        declared = re.findall(r'"(nar-caption-[\w-]+)=([\w.]+):(\w+)"', f.read())
    assert {"nar-caption-table", "nar-caption-baselines", "nar-caption-benchmark"} <= {n for n, _, _ in declared}
    for name, module, func in declared:
        assert os.path.isfile(os.path.join(BIN, name)), f"{name} is in setup.py but not installed: pip install -e ."
        with pytest.raises(SystemExit) as e:
            getattr(import_module(module), func)(["--help"])
        assert e.value.code in (0, None), name


def test_table_baselines_benchmark_exit_zero_on_success(trained, tmp_path):
    data, ckpt = trained
    score = tmp_path / "s.json"
    score.write_text(json.dumps({"name": "x", "num_images": 4, "scores": {"CIDEr-D": 0.5}, "skipped": {}}))
    p = run_cli([os.path.join(BIN, "nar-caption-table"), str(score), "--out", str(tmp_path / "t.md")],
                env=ONE_THREAD)
    assert p.returncode == 0 and p.stderr == "" and "| x | 4 | 50.0 |" in p.stdout
    p = run_cli([os.path.join(BIN, "nar-caption-baselines"), data, "--metrics", "CIDEr-D"], env=ONE_THREAD)
    assert p.returncode == 0 and "| nearest neighbour |" in p.stdout
    p = run_cli([os.path.join(BIN, "nar-caption-benchmark"), data, "--row", f"ar=--path {ckpt} --beam 1",
                 "--warmup", "0", "--max-items", "2", "--throughput-batch", "0", "--metrics", "CIDEr-D"],
                env=ONE_THREAD)
    assert p.returncode == 0 and "| ar |" in p.stdout


# --------------------------------------------------------------------------- items 2, 3: features
def test_empty_item_refused_at_load_through_fairseq_train(tmp_path):
    data = make_data(str(tmp_path / "data"), feats={"5": np.zeros((0, 8), "float32")})
    p = train(data, str(tmp_path / "ckpt"), check=False)
    assert_one_line_error(p, "fairseq-train", "features.h5: item 5: no frames or feature vectors", "(0, 8)")
    assert not os.path.exists(tmp_path / "ckpt" / "checkpoint_last.pt")
    assert not os.path.exists(tmp_path / "ckpt" / "crash.pt")


def test_absurd_values_refused_at_load_through_fairseq_train(tmp_path):
    bad = np.ones((4, 8), "float32")
    bad[1, 2] = 1e30
    data = make_data(str(tmp_path / "data"), feats={"7": bad})
    p = train(data, str(tmp_path / "ckpt"), check=False)
    assert_one_line_error(p, "fairseq-train", "features.h5: item 7: feature value 1e+30 exceeds the bound 1e+04",
                          "--feature-max-abs")
    assert not os.path.exists(tmp_path / "ckpt" / "crash.pt")


def test_lazy_check_error_from_a_dataloader_worker_is_one_line(tmp_path):
    """--feature-check lazy: the bad value is found in a DataLoader worker, mid-training; the error
    re-raised in the main process still prints as one line naming the item."""
    bad = np.ones((4, 8), "float32")
    bad[1, 2] = 1e30
    data = make_data(str(tmp_path / "data"), feats={"7": bad})
    p = train(data, str(tmp_path / "ckpt"), "--feature-check", "lazy", "--num-workers", "1", max_update=8,
              check=False)
    line = assert_one_line_error(p, "fairseq-train", "features.h5: item 7: feature value 1e+30 exceeds the bound")
    assert line.startswith(f"fairseq-train: error: {data}")


def test_magnitude_bound_is_a_parameter_and_lazy_reads_check_it(tmp_path):
    from fairseq_nar_caption.data.feature_store import open_feature_store

    write_h5(tmp_path / "f.h5", {"1": np.full((2, 3), 5e4, "float32"), "2": np.ones((2, 3), "float32")})
    with pytest.raises(DataError, match=r"f\.h5: item 1: feature value 5e\+04 exceeds the bound 1e\+04"):
        open_feature_store(str(tmp_path / "f.h5")).validate(["1", "2"])
    lazy = open_feature_store(str(tmp_path / "f.h5"))
    lazy.validate(["1", "2"], check="lazy")  # shapes only ...
    with pytest.raises(DataError, match=r"item 1: feature value"):
        lazy.get("1")  # ... values when read
    loose = open_feature_store(str(tmp_path / "f.h5"), max_abs=1e5)
    assert loose.validate(["1", "2"]) == (2, 3) and loose.get("1").max() == 5e4


def test_odd_dimension_in_the_first_key_names_that_item(tmp_path):
    """The expected dim is what most items have, so an odd first key is the one blamed."""
    from fairseq_nar_caption.data.feature_store import open_feature_store

    data = make_data(str(tmp_path / "data"), feats={"0": np.ones((4, 12), "float32")})
    assert open_feature_store(os.path.join(data, "features.h5")).peek_shape() == (4, 8)
    p = train(data, str(tmp_path / "ckpt"), check=False)
    assert_one_line_error(p, "fairseq-train", "features.h5: item 0: feature dim 12, expected 8")
    store = open_feature_store(os.path.join(data, "features.h5"))
    with pytest.raises(DataError, match=r"item 0: feature dim 12, other items have 8 \(3 of 4\)"):
        store.validate(["0", "1", "2", "3"])
    assert store.validate(["1", "2", "3"]) == (4, 8)  # a split without the odd item loads


# --------------------------------------------------------------------------- item 4: resume
def test_resume_after_truncated_checkpoint_last(tmp_path):
    data = make_data(str(tmp_path / "data"))
    save = tmp_path / "ckpt"
    train(data, str(save), "--save-interval-updates", "2", "--no-epoch-checkpoints", max_update=4)
    last = save / "checkpoint_last.pt"
    blob = last.read_bytes()
    last.write_bytes(blob[: len(blob) // 2])  # what a kill during the copy left behind
    p = train(data, str(save), "--save-interval-updates", "2", "--no-epoch-checkpoints", max_update=6)
    warning = [ln for ln in (p.stdout + p.stderr).splitlines() if "resuming from" in ln]  # fairseq logs to stdout
    assert warning and f"{last}: truncated or corrupt checkpoint" in warning[0], p.stdout[-2000:]
    assert "checkpoint_2_4.pt, the newest intact checkpoint" in warning[0]
    state = torch.load(last, map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == 6  # resumed at 4, trained on to 6
    assert not [f for f in os.listdir(save) if f.startswith(".tmp-")]


def test_resume_without_an_intact_checkpoint_names_the_file(tmp_path):
    data = make_data(str(tmp_path / "data"))
    save = tmp_path / "ckpt"
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(b"")
    p = train(data, str(save), check=False)
    assert_one_line_error(p, "fairseq-train", f"{save / 'checkpoint_last.pt'}: empty checkpoint file",
                          f"delete {save / 'checkpoint_last.pt'} to train from scratch")


def test_checkpoint_copies_are_atomic(tmp_path):
    from fairseq.file_io import PathManager

    dst = tmp_path / "checkpoint_last.pt"
    dst.write_bytes(b"old")
    with pytest.raises(OSError):
        PathManager.copy(str(tmp_path), str(dst), overwrite=True)  # a folder cannot be copied: fails midway
    assert dst.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt"]
    (tmp_path / "new.pt").write_bytes(b"new")
    assert PathManager.copy(str(tmp_path / "new.pt"), str(dst), overwrite=True)
    assert dst.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt", "new.pt"]


# --------------------------------------------------------------------------- item 6: raw framework errors
def test_truncated_hdf5_names_the_file(tmp_path):
    data = make_data(str(tmp_path / "data"))
    h5 = os.path.join(data, "features.h5")
    with open(h5, "rb") as f:
        blob = f.read()
    with open(h5, "wb") as f:
        f.write(blob[: len(blob) // 2])
    p = train(data, str(tmp_path / "ckpt"), check=False)
    assert_one_line_error(p, "fairseq-train", f"{h5}: cannot be read as HDF5, truncated or not an HDF5 file")


def test_non_utf8_manifest_names_file_and_line(tmp_path):
    data = make_data(str(tmp_path / "data"))
    with open(os.path.join(data, "train.tsv"), "ab") as f:
        f.write(b"3\ta red caf\xe9\n")
    p = train(data, str(tmp_path / "ckpt"), check=False)
    assert_one_line_error(p, "fairseq-train", "train.tsv:18: not UTF-8 text (byte 0xe9")


@pytest.mark.parametrize("template", ["{}{}", "{0}_{1}", "%d_%d", "plain"])
def test_bad_key_template_is_one_error(tmp_path, template):
    from fairseq_nar_caption.data.feature_store import open_feature_store

    write_h5(tmp_path / "f.h5", {"1": np.ones((2, 3), "float32")})
    with pytest.raises(DataError, match=r"--feature-key-template .*: needs exactly one"):
        open_feature_store(str(tmp_path / "f.h5"), template)


def test_bad_key_template_through_fairseq_train(tmp_path):
    data = make_data(str(tmp_path / "data"))
    p = train(data, str(tmp_path / "ckpt"), "--feature-key-template", "{}{}", check=False)
    assert_one_line_error(p, "fairseq-train", "--feature-key-template '{}{}': needs exactly one '{}'")


@pytest.mark.parametrize("kind", ["empty", "truncated", "random"])
def test_broken_checkpoint_through_fairseq_generate(trained, tmp_path, kind):
    data, good = trained
    bad = tmp_path / f"{kind}.pt"
    blob = open(good, "rb").read()
    bad.write_bytes({"empty": b"", "truncated": blob[: len(blob) // 3],
                     "random": np.random.default_rng(0).bytes(5000)}[kind])
    p = generate(data, str(bad), check=False)
    what = {"empty": "empty checkpoint file (0 bytes", "truncated": "truncated or corrupt checkpoint",
            "random": "not a PyTorch checkpoint"}[kind]
    assert_one_line_error(p, "fairseq-generate", f"{bad}: {what}")
    assert "H-" not in p.stdout


class Booby:
    """Unpickling this runs ``touch <marker>``: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_booby_trapped_checkpoint_is_refused_not_run(trained, tmp_path):
    data, good = trained
    state = torch.load(good, map_location="cpu")
    marker = tmp_path / "executed"
    state["extra_state"]["payload"] = Booby(str(marker))
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    p = generate(data, str(evil), check=False)
    assert_one_line_error(p, "fairseq-generate", f"{evil}: refused: the checkpoint holds the Python object",
                          "outside the weights-only allow-list")
    assert not marker.exists()


def test_dictionary_mismatch_is_refused(trained, tmp_path):
    """Two dictionary lines swapped: same size, so the weights would load and decode the wrong words."""
    data, ckpt = trained
    other = str(tmp_path / "data")
    shutil.copytree(data, other)
    words = open(os.path.join(other, "dict.txt")).read().splitlines()
    words[1], words[2] = words[2], words[1]
    with open(os.path.join(other, "dict.txt"), "w") as f:
        f.write("\n".join(words) + "\n")
    p = generate(other, ckpt, check=False)
    assert_one_line_error(p, "fairseq-generate", f"{ckpt}: trained with another dictionary than "
                          f"{os.path.join(other, 'dict.txt')}")
    assert "H-" not in p.stdout
    save = os.path.dirname(ckpt)
    resumed = str(tmp_path / "resume")
    shutil.copytree(save, resumed)  # resuming a training on the swapped dictionary is refused too
    p = train(other, resumed, max_update=6, check=False)
    assert_one_line_error(p, "fairseq-train", "trained with another dictionary than")
    assert generate(data, ckpt).returncode == 0  # the right dictionary still decodes


# --------------------------------------------------------------------------- item 5: VL images
def _vl_rows(tmp_path, image_b64):
    from fairseq_nar_caption.data.ofa_tsv import image_to_b64

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "ok.png")  # noise: a PNG long enough to cut after its header
    good = image_to_b64(str(tmp_path / "ok.png"))
    tsv = tmp_path / "caption_train.tsv"
    tsv.write_text(f"1\t1\ta red image\t\t{good}\n2\t2\ta broken image\t\t{image_b64(good)}\n")
    return str(tsv)


def _vl_dataset(tsv, image_check):
    from fairseq_nar_caption.data.vl_dataset import ImageLoader, VLDataset, read_vl_tsv
    from conftest import make_dictionary

    d = make_dictionary("a red broken image".split())
    encode = lambda text: torch.LongTensor([d.index(w) for w in text.split()])  # noqa: E731
    return VLDataset(read_vl_tsv(tsv, "caption", True), tsv, "caption", ImageLoader(None, 8), d, encode,
                     image_check=image_check)


def test_corrupt_base64_image_refused_at_load(tmp_path):
    import base64

    def truncated(good):  # a PNG cut in half: its header still parses
        raw = base64.urlsafe_b64decode(good)
        return base64.urlsafe_b64encode(raw[: len(raw) // 2]).decode()

    tsv = _vl_rows(tmp_path, truncated)
    with pytest.raises(DataError, match=r"caption_train\.tsv: row 2 \(id 2\): cannot decode the image"):
        _vl_dataset(tsv, "full")
    lazy = _vl_dataset(tsv, "lazy")  # lazy: loads, and the row fails, named, when read
    assert lazy[0]["image"].shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"row 2 \(id 2\): cannot decode the image"):
        lazy[1]
    garbage = _vl_rows(tmp_path, lambda good: "not-an-image")
    with pytest.raises(DataError, match=r"row 2 \(id 2\): image column: not a base64 image"):
        _vl_dataset(garbage, "lazy")  # even lazy reads the header


# --------------------------------------------------------------------------- item 7: silent wrong results
def _generate_output(path, pairs):
    """fairseq-generate lines: T- (the sample's first reference) and H- per sample."""
    with open(path, "w") as f:
        for i, (target, hyp) in enumerate(pairs):
            f.write(f"T-{i}\t{target}\nH-{i}\t-0.5\t{hyp}\nD-{i}\t-0.5\t{hyp}\n")
    return str(path)


def test_score_without_manifest_refuses_references_in_another_order(tmp_path):
    from fairseq_nar_caption.cli.score import score_files
    from fairseq_nar_caption.data.manifest import CaptionRow, write_coco_refs, write_manifest

    rows = [CaptionRow("a", "a red circle"), CaptionRow("b", "a blue square"), CaptionRow("c", "a green star")]
    write_manifest(str(tmp_path / "test.tsv"), rows)
    write_coco_refs(str(tmp_path / "refs.json"), rows)
    write_coco_refs(str(tmp_path / "shuffled.json"), [rows[2], rows[0], rows[1]])
    gen = _generate_output(tmp_path / "gen.txt", [(r.caption, r.caption) for r in rows])
    ok = score_files(str(tmp_path / "shuffled.json"), gen, manifest=str(tmp_path / "test.tsv"), metrics=["CIDEr-D"])
    assert ok["num_images"] == 3
    assert score_files(str(tmp_path / "refs.json"), gen, metrics=["CIDEr-D"])["num_images"] == 3
    p = run_cli([os.path.join(BIN, "nar-caption-score"), "--refs", str(tmp_path / "shuffled.json"),
                 "--generate-output", gen, "--metrics", "CIDEr-D", "--json-out", str(tmp_path / "s.json")],
                check=False, env=ONE_THREAD)
    assert_one_line_error(p, "nar-caption-score", "gen.txt: sample 0's target 'a red circle' is not a reference of "
                          "item c", "pass --manifest")
    assert not (tmp_path / "s.json").exists()
    no_targets = tmp_path / "h_only.txt"
    no_targets.write_text("".join(ln for ln in open(gen) if ln.startswith("H-")))
    with pytest.raises(DataError, match=r"no 'T-<id>' target lines .* pass --manifest"):
        score_files(str(tmp_path / "refs.json"), str(no_targets), metrics=["CIDEr-D"])


def test_duplicate_manifest_rows_are_reported(tmp_path, caplog):
    from fairseq_nar_caption.data.manifest import read_manifest

    write_tsv(tmp_path / "m.tsv", [("1", "a red circle"), ("2", "a cat"), ("1", "a red circle")])
    with caplog.at_level("WARNING"):
        rows = read_manifest(str(tmp_path / "m.tsv"))
    assert len(rows) == 3  # kept: several annotators may write one caption
    assert f"{tmp_path / 'm.tsv'}:4: item 1: caption repeats line 2" in caplog.text


def test_hub_refuses_integer_features(trained):
    from fairseq_nar_caption.hub import CaptionHub

    data, ckpt = trained
    hub = CaptionHub.from_pretrained(ckpt, data, generate_args=("--beam", "1"))
    assert len(hub.caption([np.ones((4, 8), "float32")])) == 1
    with pytest.raises(ValueError, match=r"features\[0\]: dtype int64, expected floating-point features"):
        hub.caption([np.ones((4, 8), "int64")])


# --------------------------------------------------------------------------- item 8: one line, traceback on demand
def _raise_in_cli_process(exc, env=ONE_THREAD):
    code = ("import sys; sys.argv[0] = 'fairseq-train'; import fairseq_nar_caption; "
            f"from fairseq_nar_caption.data.manifest import DataError; raise {exc}")
    return run_cli([sys.executable, "-c", code], check=False, env=env, cwd=REPO)


def test_known_errors_one_line_unexpected_errors_keep_traceback():
    p = _raise_in_cli_process("DataError('x.tsv:3: item 7: bad')")
    assert p.returncode == 1 and last_line(p) == "fairseq-train: error: x.tsv:3: item 7: bad"
    assert "Traceback" not in p.stderr
    p = _raise_in_cli_process("RuntimeError('a bug')")
    assert p.returncode == 1 and "Traceback" in p.stderr and "RuntimeError: a bug" in p.stderr


def test_traceback_env_through_fairseq_train(tmp_path):
    data = make_data(str(tmp_path / "data"), feats={"5": np.zeros((0, 8), "float32")})
    p = train(data, str(tmp_path / "ckpt"), check=False, env=dict(ONE_THREAD, NAR_CAPTION_TRACEBACK="1"))
    assert p.returncode != 0 and "Traceback" in p.stderr and "item 5: no frames or feature vectors" in p.stderr


def test_importing_the_package_leaves_a_user_program_alone():
    code = "import sys, fairseq_nar_caption; print(sys.excepthook is sys.__excepthook__)"
    assert run_cli([sys.executable, "-c", code], env=ONE_THREAD, cwd=REPO).stdout.strip() == "True"


# --------------------------------------------------------------------------- item 10: one home per format
def test_one_reader_one_answer_parser_one_label_list(tmp_path):
    from fairseq_nar_caption.data import ofa_tsv, vl_dataset
    from fairseq_nar_caption.data.toy import vl as toy_vl
    from fairseq_nar_caption.data.vl_dataset import read_vl_tsv

    assert vl_dataset.ENTAILMENT_LABELS is ofa_tsv.ENTAILMENT_LABELS is toy_vl.ENTAILMENT_LABELS
    # a header-bearing file (the toy layout) reads the same in training as in the scorer
    (tmp_path / "vqa_train.tsv").write_text("question_id\timage_id\tquestion\tanswers\n"
                                            "q1\t7\twhat colour?\t0.6|!+red&&1.0|!+dark red\n")
    rows = read_vl_tsv(str(tmp_path / "vqa_train.tsv"), "vqa", True)
    assert rows[0].uniq_id == "q1" and rows[0].image == "7" and rows[0].target == "dark red"
    assert rows[0].answers == ofa_tsv_answers("0.6|!+red&&1.0|!+dark red")
    # what the scorer refuses, training refuses too, with the file and line
    (tmp_path / "vqa_bad.tsv").write_text("q1\t7\twhat colour?\t1.5|!+red\t\timg\n")
    with pytest.raises(DataError, match=r"vqa_bad\.tsv:1 \(id q1\): .*confidence 1\.5 is outside \[0, 1\]"):
        read_vl_tsv(str(tmp_path / "vqa_bad.tsv"), "vqa", True)


def ofa_tsv_answers(field):
    from fairseq_nar_caption.data.ofa_tsv import parse_ofa_answers

    return parse_ofa_answers(field)


def test_console_entries_report_errors_under_their_installed_name(tmp_path):
    p = run_cli([os.path.join(BIN, "nar-caption-score"), "--refs", str(tmp_path / "none.json"),
                 "--results", str(tmp_path / "r.json")], check=False, env=ONE_THREAD)
    assert_one_line_error(p, "nar-caption-score", f"{tmp_path / 'none.json'}: COCO references file not found")
    from fairseq_nar_caption.cli import table

    with pytest.raises(SystemExit, match=f"^[\\w.-]+: error: {tmp_path / 'none.json'}: score file not found$"):
        table.cli_main([str(tmp_path / "none.json")])


# ----------------------------------------------------------------- models, tasks and generators (item 6, 7)
def _fake_task(**kw):
    from types import SimpleNamespace

    from conftest import make_dictionary

    d = make_dictionary("a red ball".split())
    base = dict(target_dictionary=d, feature_dim=6, tokens_per_modality=[4], cfg=SimpleNamespace(_name="captioning"))
    base.update(kw)
    return SimpleNamespace(**base)


def test_saic_group_size_beyond_the_positions_is_one_error():
    from omegaconf import OmegaConf

    from fairseq_nar_caption.models.saic import SAICConfig, SAICModel

    cfg = OmegaConf.structured(SAICConfig(group_size=40, embed_dim=16, ffn_embed_dim=32, attention_heads=2,
                                          encoder_layers=1, decoder_layers=1, max_source_positions=8,
                                          max_target_positions=32))
    with pytest.raises(DataError, match=r"--group-size must be in \[1, --max-target-positions 32\), got 40"):
        SAICModel.build_model(cfg, _fake_task())


def test_feature_model_under_a_pixel_task_is_one_error():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from fairseq_nar_caption.models.ar_caption import ARCaptionModel, CaptionModelConfig

    vl = _fake_task(cfg=SimpleNamespace(_name="vision_language", vl_task="caption"))
    del vl.feature_dim
    cfg = OmegaConf.structured(CaptionModelConfig(embed_dim=16, ffn_embed_dim=32, attention_heads=2,
                                                  encoder_layers=1, decoder_layers=1, max_source_positions=8,
                                                  max_target_positions=16))
    with pytest.raises(DataError, match="reads pre-extracted features: decode it with --task captioning"):
        ARCaptionModel.build_model(cfg, vl)


def test_rdt_without_its_retrieval_file_is_one_error():
    from omegaconf import OmegaConf

    from fairseq_nar_caption.models.rdt import RDTConfig, RDTModel

    cfg = OmegaConf.structured(RDTConfig(embed_dim=16, ffn_embed_dim=32, attention_heads=2, encoder_layers=1,
                                         semantic_layers=1, decoder_layers=1, seq_len=8, max_source_positions=8,
                                         max_target_positions=16))
    with pytest.raises(DataError, match="--retrieval-file"):
        RDTModel.build_model(cfg, _fake_task(retrieved=None))


def test_narvl_checkpoint_of_one_vl_task_refuses_another():
    from types import SimpleNamespace

    from fairseq_nar_caption.models.narvl import NARVLModel, NARVLModelConfig

    cfg = NARVLModelConfig(embed_dim=16, ffn_embed_dim=32, attention_heads=2, encoder_layers=1, decoder_layers=1,
                           resnet_layers="1,1,1", resnet_width=8, max_text_positions=8, patch_image_size=32,
                           max_source_positions=64, max_target_positions=16, num_queries=4)
    NARVLModel.build_model(cfg, _fake_task(cfg=SimpleNamespace(vl_task="caption")))
    assert cfg.trained_vl_task == "caption"  # recorded on the first build, saved with the checkpoint's cfg
    with pytest.raises(DataError, match="trained for --vl-task caption, not --vl-task vqa"):
        NARVLModel.build_model(cfg, _fake_task(cfg=SimpleNamespace(vl_task="vqa")))


@pytest.mark.parametrize("option, value, message", [
    ("nar_min_length", -5, r"--nar-min-length must be >= 1, got -5"),
    ("length_norm_alpha", -100.0, r"--length-norm-alpha must be in \[0, 2\], got -100"),
    ("nar_iterations", 0, r"--nar-iterations must be >= 1"),
])
def test_out_of_range_decoding_options_are_one_error(option, value, message):
    from types import SimpleNamespace

    from fairseq_nar_caption.generators import build_caption_generator

    stub = SimpleNamespace(forward_length=None, forward_decoder_nar=None)
    with pytest.raises(DataError, match=message):
        build_caption_generator("mp", [stub], _fake_task().target_dictionary, SimpleNamespace(**{option: value}))
