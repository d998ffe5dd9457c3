"""The retrieval file of RDT and its ranker are bound to the data they were made on, and
``nar-caption-retrieve`` never destroys a file: checks before work, one line per failure, the
inputs byte-identical afterwards, nothing half-written under a final name (a full disk, two runs
into one output, SIGTERM).  Tiny data made here: 36 items of (4, 6) random features."""
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import termios
import time

import numpy as np
import pytest

from conftest import BIN, USER_DIR, assert_one_line, digests, file_size_limit, run_cli, write_h5, write_tsv
from fairseq_nar_caption.cli import retrieve
from fairseq_nar_caption.data import ranking
from fairseq_nar_caption.data.retrieval import RetrievalFile, data_fingerprint, retrieval_document
from fairseq_nar_caption.errors import DataError

PROG = "nar-caption-retrieve"
RETRIEVE = os.path.join(BIN, PROG)
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")
ONE_THREAD.pop("NAR_CAPTION_TRACEBACK", None)
WORDS = "a the red blue green small big circle square ball box on left right".split()
REMAKE = "run nar-caption-retrieve again on this data"


def make_data(folder, seed=0, n=(24, 6, 6), words=5):
    """features.h5 ((4, 6) per item, ids 0..), train/val/test manifests (2 random captions per
    item, drawn with ``seed``), dict.txt of every word."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = sum(n)
    write_h5(os.path.join(folder, "features.h5"),
             {str(i): rng.normal(size=(4, 6)).astype("float32") for i in range(total)})
    start = 0
    for split, count in zip(("train", "val", "test"), n):
        rows = [(str(i), " ".join(rng.choice(WORDS, words))) for i in range(start, start + count) for _ in range(2)]
        write_tsv(os.path.join(folder, f"{split}.tsv"), rows)
        start += count
    with open(os.path.join(folder, "dict.txt"), "w") as f:
        f.write("".join(f"{w} 1\n" for w in WORDS))
    return str(folder)


def inputs_of(data):
    return [os.path.join(data, f) for f in ("train.tsv", "val.tsv", "test.tsv", "features.h5", "dict.txt")]


def listing(folder):
    return sorted(os.listdir(folder))


def run(*args, **kw):
    return run_cli([RETRIEVE, *map(str, args)], check=False, env=ONE_THREAD, timeout=120, **kw)


@pytest.fixture
def two_datasets(tmp_path):
    """A and B: the same item ids, other features and other captions (another dataset)."""
    return make_data(tmp_path / "A", seed=0), make_data(tmp_path / "B", seed=1)


# --------------------------------------------------------------------------- bound to its data
def test_retrieval_of_another_dataset_with_the_same_ids_is_refused(two_datasets, tmp_path):
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

    a, b = two_datasets
    ret = str(tmp_path / "ra.json")
    retrieve.main([a, "--k", "3", "--out", ret, "--no-progress"])
    made = [ret, ranking.ranker_path(ret)]
    doc = json.loads(open(ret).read())
    assert set(doc["fingerprint"]["manifests"]) == {"train", "val", "test"}
    assert doc["fingerprint"]["features"] == [{"file": "features.h5", "kind": "hdf5", "items": 36, "shape": [4, 6],
                                               "bytes": os.path.getsize(os.path.join(a, "features.h5")),
                                               "extractor_settings": None}]
    before = digests(*inputs_of(a), *inputs_of(b), *made)

    # on its own data: accepted, every split
    task = CaptioningTask.setup_task(CaptioningConfig(data=a, retrieval_file=ret, seed=1))
    for split in ("train", "val", "test"):
        task.load_dataset(split)
    # on B (the same ids, other captions): refused where the task loads it, naming both files and the fix
    with pytest.raises(DataError) as e:
        CaptioningTask.setup_task(CaptioningConfig(data=b, retrieval_file=ret, seed=1))
    msg = str(e.value)
    assert msg.startswith(f"{ret}: made on other data: {os.path.join(b, 'train.tsv')} is not the training "
                          f"manifest") and REMAKE in msg and "\n" not in msg, msg
    # the hub's ranker: the same check, and it must belong to the retrieval file beside it
    with pytest.raises(DataError, match=f"made on other data: {os.path.join(b, 'train.tsv')}"):
        ranking.Ranker.load(ranking.ranker_path(ret), data=b)
    ranking.Ranker.load(ranking.ranker_path(ret), data=a, retrieval=RetrievalFile(ret, a))
    other = str(tmp_path / "ridge2.json")
    retrieve.main([a, "--k", "3", "--ridge", "2", "--out", other, "--no-progress"])
    with pytest.raises(DataError, match=f"not the ranker of {other}"):
        ranking.Ranker.load(ranking.ranker_path(ret), data=a, retrieval=RetrievalFile(other, a))

    # through the command line: fairseq-train of an RDT model on B with A's file, one line, nothing made
    save = tmp_path / "ckpt"
    p = run_cli([os.path.join(BIN, "fairseq-train"), b, "--user-dir", USER_DIR, "--task", "captioning", "--generator", "diffusion",
                 "--retrieval-file", ret, "--arch", "rdt_tiny", "--criterion", "rdt_loss", "--optimizer", "adam",
                 "--lr", "1e-3", "--max-update", "1", "--batch-size", "4", "--cpu", "--no-progress-bar",
                 "--save-dir", save], check=False, env=ONE_THREAD, timeout=300)
    assert_one_line(p, "fairseq-train", ret, os.path.join(b, "train.tsv"), REMAKE)
    assert not save.exists() or not os.listdir(save)
    assert digests(*inputs_of(a), *inputs_of(b), *made) == before

    # C: B's data with A's training manifest: accepted until a split whose manifest differs is loaded
    c = str(tmp_path / "C")
    shutil.copytree(b, c)
    shutil.copy(os.path.join(a, "train.tsv"), os.path.join(c, "train.tsv"))
    task = CaptioningTask.setup_task(CaptioningConfig(data=c, retrieval_file=ret, seed=1))
    task.load_dataset("train")
    with pytest.raises(DataError, match=f"{ret}: made on other data: {os.path.join(c, 'test.tsv')} is not the "
                                        f"test manifest it was made with .*; {REMAKE}"):
        task.load_dataset("test")


def test_retrieval_without_fingerprint_or_with_foreign_sentences_is_refused(tmp_path):
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

    a = make_data(tmp_path / "A")
    train = [ln.split("\t")[1].strip() for ln in open(os.path.join(a, "train.tsv")).readlines()[1:]]
    ids = [str(i) for i in range(36)]
    # a file as nar-caption-retrieve wrote it before fingerprints (sentences of the training split)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"embedding": "x", "k": 1, "items": {i: [train[0]] for i in ids}}))
    before = digests(*inputs_of(a), old)
    with pytest.raises(DataError, match=f"{old}: no fingerprint of the data it was made on .*; {REMAKE}"):
        CaptioningTask.setup_task(CaptioningConfig(data=a, retrieval_file=str(old), seed=1))
    # a hand-made file with a fingerprint of this data but a sentence that is no training caption
    fp = data_fingerprint(a, ["train", "val", "test"])
    foreign = tmp_path / "foreign.json"
    items = {i: [train[1]] for i in ids}
    items["7"] = ["a caption of some other dataset"]
    foreign.write_text(json.dumps(retrieval_document(items, fp)))
    with pytest.raises(DataError, match=f"{foreign}: item 7: retrieved sentence 'a caption of some other dataset' "
                                        f"is not a caption of {os.path.join(a, 'train.tsv')}"):
        RetrievalFile(str(foreign), a)
    items["7"] = [train[2]]
    foreign.write_text(json.dumps(retrieval_document(items, fp)))
    RetrievalFile(str(foreign), a)  # the same file with training captions only: accepted
    # a ranker without a fingerprint: refused where the hub loads it
    ranker = tmp_path / "old.ranker.npz"
    np.savez(ranker, mean=np.zeros(6, "float32"), std=np.ones(6, "float32"), w=np.zeros((7, 3), "float32"),
             sentences=np.array(train[:3]), settings=np.array(json.dumps({"pooling": "mean"})))
    with pytest.raises(DataError, match=f"{ranker}: no fingerprint"):
        ranking.Ranker.load(str(ranker), data=a)
    assert digests(*inputs_of(a), old) == before
    # the command line: a fingerprint-less file, one line exit 1 (an RDT model's data load)
    save = tmp_path / "ckpt"
    p = run_cli([os.path.join(BIN, "fairseq-train"), a, "--user-dir", USER_DIR, "--task", "captioning", "--generator", "diffusion",
                 "--retrieval-file", old, "--arch", "rdt_tiny", "--criterion", "rdt_loss", "--optimizer", "adam",
                 "--lr", "1e-3", "--max-update", "1", "--batch-size", "4", "--cpu", "--no-progress-bar",
                 "--save-dir", save], check=False, env=ONE_THREAD, timeout=300)
    assert_one_line(p, "fairseq-train", f"{old}: no fingerprint", REMAKE)
    assert digests(*inputs_of(a), old) == before


# --------------------------------------------------------------------------- outputs
def test_output_that_is_an_input_or_a_foreign_file_is_refused_and_own_output_replaced(tmp_path):
    a = make_data(tmp_path / "A")
    out = tmp_path / "out"
    out.mkdir()
    before = digests(*inputs_of(a))
    for target in ("train.tsv", "features.h5"):
        p = run(a, "--k", "2", "--out", os.path.join(a, target))
        assert_one_line(p, PROG, f"{os.path.join(a, target)}: is also an input of this command")
    mine = out / "r.json"
    mine.write_text("my own notes\n")
    p = run(a, "--k", "2", "--out", mine)
    assert_one_line(p, PROG, f"{mine}: already exists and was not made by nar-caption-retrieve", "--overwrite")
    assert mine.read_text() == "my own notes\n" and listing(out) == ["r.json"]
    # the ranker beside a new output is checked too
    ranker = out / "s.ranker.npz"
    ranker.write_bytes(b"not mine")
    p = run(a, "--k", "2", "--out", out / "s.json")
    assert_one_line(p, PROG, f"{ranker}: already exists and was not made by nar-caption-retrieve")
    assert ranker.read_bytes() == b"not mine" and listing(out) == ["r.json", "s.ranker.npz"]
    assert digests(*inputs_of(a)) == before
    # an output this command made is replaced by a re-run, quietly (no progress bars off a terminal)
    new = out / "t.json"
    p = run(a, "--k", "2", "--out", new)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    p = run(a, "--k", "3", "--out", new)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    doc = json.loads(new.read_text())
    assert doc["k"] == 3 and len(doc["items"]) == 36 and all(len(s) == 3 for s in doc["items"].values())
    assert sorted(listing(out)) == sorted([".nar-caption-outputs.json", "r.json", "s.ranker.npz", "t.json",
                                           "t.ranker.npz"])
    assert digests(*inputs_of(a)) == before


@pytest.mark.parametrize("args, fragment", [(["--k", "0"], "argument --k: must be >= 1, got 0"),
                                            (["--block-mb", "-1"], "argument --block-mb: must be > 0, got -1"),
                                            (["--splits", ""], "argument --splits: expected comma-separated names"),
                                            (["--splits", "train,,test"], "argument --splits: expected comma-"),
                                            (["--splits", "train,nope"], "split nope has no manifest")])
def test_bad_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, fragment):
    a = make_data(tmp_path / "A")
    before, files = digests(a), listing(a)
    p = run(a, *args)
    assert_one_line(p, PROG, fragment, status=2)
    assert digests(a) == before and listing(a) == files


def test_a_full_location_is_one_line_and_leaves_nothing(tmp_path):
    a = make_data(tmp_path / "A")
    out = tmp_path / "out"
    out.mkdir()
    before = digests(*inputs_of(a))
    # a location that fills up while the outputs are written: the work is done, then one line, nothing left
    p = run(a, "--out", out / "r.json", preexec_fn=file_size_limit(1024))
    assert_one_line(p, PROG, "cannot write (File too large); nothing was written under this name")
    assert listing(out) == [] and digests(*inputs_of(a)) == before


def test_two_runs_into_one_output_leave_one_whole_file(tmp_path):
    a = make_data(tmp_path / "A")
    out = tmp_path / "out"
    out.mkdir()
    before = digests(*inputs_of(a))
    cmd = [RETRIEVE, a, "--k", "3", "--out", str(out / "r.json")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for status, err in results:  # both succeed, or one refuses in one line
        assert status == 0 or (status == 1 and len(err.strip().splitlines()) == 1), err
    assert any(status == 0 for status, _ in results)
    assert listing(out) == [".nar-caption-outputs.json", "r.json", "r.ranker.npz"]  # no temporary file
    doc = json.loads((out / "r.json").read_text())
    assert len(doc["items"]) == 36 and doc["fingerprint"]["train_split"] == "train"
    RetrievalFile(str(out / "r.json"), a)
    ranking.Ranker.load(str(out / "r.ranker.npz"), data=a, retrieval=RetrievalFile(str(out / "r.json"), a))
    assert digests(*inputs_of(a)) == before


def test_sigterm_exits_143_in_one_line_and_leaves_nothing(tmp_path):
    """On a terminal the run shows progress bars; SIGTERM once the search has started."""
    a = make_data(tmp_path / "big", n=(300, 20, 20))
    out = tmp_path / "out"
    out.mkdir()
    before = digests(*inputs_of(a))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([RETRIEVE, a, "--k", "3", "--block-mb", "0.00001", "--out", str(out / "r.json")],
                            stdout=subprocess.PIPE, stderr=slave, env=ONE_THREAD)
    os.close(slave)
    seen, sent, deadline = b"", False, time.time() + 120
    try:
        while time.time() < deadline:
            if not sent and b"search train" in seen:
                time.sleep(0.5)
                assert proc.poll() is None, "finished before the signal: make the job longer"
                proc.send_signal(signal.SIGTERM)
                sent = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode("utf-8", "replace")
    assert sent and "pooling train" in text, text[-2000:]
    lines = [s.strip() for s in text.replace("\r", "\n").split("\n") if s.strip()]
    assert status == 143, text[-2000:]
    assert lines[-1] == f"{PROG}: terminated (SIGTERM); nothing was left half-written", text[-2000:]
    assert "Traceback" not in text
    assert listing(out) == []  # neither final name, no temporary file
    assert digests(*inputs_of(a)) == before
