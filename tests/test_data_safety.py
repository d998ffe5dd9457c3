"""No command destroys a user's file; every failure is one line; checks come before the work.

Each test builds its own bad situation (an output that is an input, an existing file another
program made, a location that cannot take the output, a signal in the middle of the work, a
malformed dictionary …) and asserts the one line, the exit status, and that every input file is
byte-identical afterwards (``digests``).  A full disk is a file-size limit on the subprocess
(``file_size_limit``): writes past it fail as they would on a full disk."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BIN, USER_DIR, assert_one_line, digests, file_size_limit, run_cli
from test_bad_input import ONE_THREAD, generate, make_data, train, trained  # noqa: F401  (trained: a fixture)

DISTILL = os.path.join(BIN, "nar-caption-distill")


@pytest.fixture(scope="module")
def long_job(tmp_path_factory):
    """A model and a split large enough that decoding it one item at a time takes many seconds."""
    root = tmp_path_factory.mktemp("long")
    data = make_data(str(root / "data"), n=1200)
    save = str(root / "ckpt")
    train(data, save, max_update=2)
    return data, os.path.join(save, "checkpoint_last.pt")


def leftovers(folder):
    """Temporary files our writers use (``.<name>.<random>.tmp…``) or probes left in ``folder``."""
    return [n for n in os.listdir(folder) if ".tmp" in n or n.startswith(".nar-caption-probe")]


# --------------------------------------------------------------------------- outputs that are inputs
@pytest.mark.parametrize("out_split, fragment", [
    ("train", "is the split being decoded"),
    ("test", "already exists and was not made by nar-caption-distill"),
])
def test_distill_never_replaces_the_human_captions_or_the_test_manifest(trained, out_split, fragment):
    data, ckpt = trained
    before = digests(data, ckpt)
    p = run_cli([DISTILL, data, "--path", ckpt, "--out-split", out_split], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-distill", f"{out_split}.tsv", fragment)
    assert digests(data, ckpt) == before


def test_distill_replaces_only_what_it_made_and_says_so_before_decoding(trained):
    data, ckpt = trained
    out = os.path.join(data, "train_kd.tsv")
    p = run_cli([DISTILL, data, "--path", ckpt, "--out-split", "train_kd", "--beam", "1"], env=ONE_THREAD)
    assert "wrote" in p.stdout and os.path.isfile(out)
    run_cli([DISTILL, data, "--path", ckpt, "--out-split", "train_kd", "--beam", "1"], env=ONE_THREAD)  # its own
    with open(out, "a") as f:  # edited by hand: the user's file now
        f.write("0\ta red circle\tDT JJ NN\n")
    before = digests(data)
    p = run_cli([DISTILL, data, "--path", ckpt, "--out-split", "train_kd"], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-distill", "train_kd.tsv: already exists and was not made by", "--overwrite")
    assert digests(data) == before
    assert "Loading" not in p.stderr and "loaded" not in p.stderr.lower()  # refused before the model was loaded
    run_cli([DISTILL, data, "--path", ckpt, "--out-split", "train_kd", "--beam", "1", "--overwrite"], env=ONE_THREAD)
    assert sum(1 for _ in open(out)) == 1 + 16  # header + one row per training item again


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "-1"], "argument --batch-size: must be >= 1, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--out-split", "train_opt.tsv"], "argument --out-split: a split is the name of <data>/<split>.tsv without"),
    (["--beam", "0"], "--beam must be >= 1, got 0"),
    (["--max-len-b", "0"], "--max-len-b 0 with --max-len-a 0 leaves no room for a word"),
    (["--no-such-option", "3"], "fairseq-generate arguments: unrecognized arguments: --no-such-option 3"),
])
def test_distill_options_checked_before_anything_is_written(trained, args, fragment):
    data, ckpt = trained
    out = os.path.join(data, "train_opt.tsv")
    with open(out, "w") as f:
        f.write("item_id\tcaption\n0\tmine\n")
    before = digests(data)
    p = run_cli([DISTILL, data, "--path", ckpt, "--out-split", "train_opt", "--overwrite", *args],
                check=False, env=ONE_THREAD)
    status = 2 if fragment.startswith("argument") else 1
    assert_one_line(p, "nar-caption-distill", fragment, status=status)
    assert digests(data) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_one_line(trained):
    data, ckpt = trained
    p = run_cli([DISTILL, data, "--path", ckpt, "--device", "cuda"], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-distill", "argument --device: no CUDA device is available here", status=2)


def test_unwritable_and_full_locations(long_job, tmp_path):
    """A folder that does not exist, and a disk that fills up: one line, no output, no temporary file.
    (The full disk's limit leaves room for what the framework itself writes, e.g. semaphores.)"""
    data, ckpt = long_job
    score = os.path.join(BIN, "nar-caption-score")
    refs = os.path.join(data, "test_refs.json")
    from fairseq_nar_caption.data.manifest import read_manifest, write_coco_refs

    write_coco_refs(refs, read_manifest(os.path.join(data, "test.tsv")))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": str(i), "caption": "a red circle"} for i in range(1196, 1200)]))
    before = digests(data, results)
    p = run_cli([score, "--refs", refs, "--results", results, "--metrics", "CIDEr-D",
                 "--json-out", tmp_path / "nowhere" / "s.json"], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-score", "s.json: the folder", "does not exist")
    # a disk that fills up while the output is written: the work is done, then one line, nothing left
    p = run_cli([DISTILL, data, "--path", ckpt, "--out-split", "train_full", "--beam", "1"], check=False,
                env=ONE_THREAD, preexec_fn=file_size_limit(4096))
    assert_one_line(p, "nar-caption-distill", "train_full.tsv: cannot write (File too large); nothing was written")
    assert not os.path.exists(os.path.join(data, "train_full.tsv")) and not leftovers(data)
    assert digests(data, results) == before


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only; skipped where mounting is not allowed); unmounted after the test."""
    mounts = []

    def mount(size_kb):
        where = tmp_path / f"mnt{len(mounts)}"
        where.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_and_full_file_systems(long_job, tmpfs):
    """A read-only data folder is found by the probe before the model is loaded; a real full disk
    (a tmpfs with one page free: the probe fits, the distilled split does not) is one line after the
    work, with nothing left on it."""
    import shutil

    data, ckpt = long_job
    ro = tmpfs(8192)
    shutil.copytree(data, ro / "data")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    before = digests(ro)
    p = run_cli([DISTILL, ro / "data", "--path", ckpt, "--out-split", "train_ro"], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-distill", "train_ro.tsv: cannot write in", "Read-only file system")
    assert "Loading" not in p.stderr and digests(ro) == before
    full = tmpfs(8192)
    shutil.copytree(data, full / "data")
    fd = os.open(full / "filler", os.O_CREAT | os.O_WRONLY)
    try:
        while os.write(fd, b"\0" * 4096) == 4096:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(full / "filler", os.path.getsize(full / "filler") - 4096)
    before = digests(full / "data")
    p = run_cli([DISTILL, full / "data", "--path", ckpt, "--out-split", "train_full", "--beam", "1"], check=False,
                env=ONE_THREAD)
    assert_one_line(p, "nar-caption-distill", "train_full.tsv: cannot write (No space left on device)")
    assert digests(full / "data") == before and not leftovers(full / "data")


# --------------------------------------------------------------------------- interrupts
def _open_files(pid):
    """Paths of the files open in process ``pid`` and its descendants (Linux /proc)."""
    paths, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                paths.add(os.readlink(f"/proc/{p}/fd/{fd}"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass  # a process or descriptor that ended meanwhile
    return paths


def _interrupt(cmd, sig, data, **kw):
    """Run ``cmd``; once it reads ``data``'s features (past start-up, inside the decoding: not after a
    fixed time, which a loaded machine can spend importing) send ``sig``."""
    # SIGINT as a terminal delivers it: a child of a background job inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler (a user's Ctrl-C never reaches such a process)
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ONE_THREAD, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)
    features, deadline = os.path.realpath(os.path.join(data, "features.h5")), time.time() + 300
    while features not in _open_files(proc.pid):
        assert proc.poll() is None, "finished before it read its features"
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"did not open {features} within 300 s: {' '.join(map(str, cmd))}")
        time.sleep(0.2)
    time.sleep(1)
    assert proc.poll() is None, "finished before the signal: make the job longer"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_distill_interrupted_leaves_nothing(long_job, sig, status, word):
    data, ckpt = long_job
    before = digests(data, ckpt)
    p = _interrupt([DISTILL, data, "--path", ckpt, "--batch-size", "1", "--beam", "1"], sig, data)
    assert_one_line(p, "nar-caption-distill", word, status=status)
    assert not os.path.exists(os.path.join(data, "train_distill.tsv")) and not leftovers(data)
    assert digests(data, ckpt) == before


def test_generate_interrupted_leaves_no_partial_results_file(long_job, tmp_path):
    data, ckpt = long_job
    results = tmp_path / "gen"
    cmd = [os.path.join(BIN, "fairseq-generate"), data, "--user-dir", USER_DIR, "--task", "captioning",
           "--path", ckpt, "--gen-subset", "train", "--batch-size", "1", "--beam", "1", "--cpu",
           "--results-path", results]
    before = digests(data, ckpt)
    p = _interrupt(cmd, signal.SIGINT, data)
    line = assert_one_line(p, "fairseq-generate", "interrupted (Ctrl-C)", status=130)
    assert not (results / "generate-train.txt").exists(), line
    assert digests(data, ckpt) == before


# --------------------------------------------------------------------------- one rule per input kind
def test_fairseq_dictionary_errors_are_one_line_and_a_bom_is_accepted(tmp_path):
    data = make_data(str(tmp_path / "data"))
    d = os.path.join(data, "dict.txt")
    good = open(d, encoding="utf-8").read()
    for text, fragment in [(good + "red 3\n", "dict.txt:6: the word 'red' repeats line 2"),
                           (good + "green\n", "dict.txt:6: 'green' is not '<word> <count>' (the count is missing)"),
                           (good + "\n", "dict.txt:6: blank line")]:
        with open(d, "w", encoding="utf-8") as f:
            f.write(text)
        p = train(data, str(tmp_path / "ckpt"), check=False)
        assert_one_line(p, "fairseq-train", fragment)
    # a byte-order mark (as some editors write) in the dictionary and a manifest: read as plain UTF-8
    with open(d, "w", encoding="utf-8-sig") as f:
        f.write(good)
    train_tsv = os.path.join(data, "train.tsv")
    text = open(train_tsv, encoding="utf-8").read()
    with open(train_tsv, "w", encoding="utf-8-sig") as f:
        f.write(text)
    p = train(data, str(tmp_path / "ckpt_bom"), max_update=1)
    assert p.returncode == 0
    from fairseq_nar_caption.data.manifest import read_manifest
    from fairseq_nar_caption.tasks.base import load_dictionary_with

    assert read_manifest(train_tsv)[0].item_id == "0"
    assert load_dictionary_with(d).index("a") == 4  # not '\ufeffa'


def test_feature_stores_refuse_integers_and_groups_like_the_hub(tmp_path):
    import h5py

    data = make_data(str(tmp_path / "ints"), feats={"3": np.ones((4, 8), "int64")})
    p = train(data, str(tmp_path / "c1"), check=False)
    assert_one_line(p, "fairseq-train", "features.h5: item 3: dtype int64, expected floating-point features")
    data = make_data(str(tmp_path / "group"))
    with h5py.File(os.path.join(data, "features.h5"), "a") as f:
        del f["5"]
        f.create_group("5").create_dataset("grid", data=np.ones((4, 8), "float32"))
    before = digests(data)
    p = train(data, str(tmp_path / "c2"), check=False)
    assert_one_line(p, "fairseq-train", "features.h5: key '5' is an HDF5 group, not a dataset of features")
    assert digests(data) == before


@pytest.mark.parametrize("args, fragment", [
    (["--beam", "0"], "--beam must be >= 1, got 0"),
    (["--max-len-b", "0"], "--max-len-b 0 with --max-len-a 0 leaves no room for a word"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--nbest", "3"], "--nbest 3 exceeds --beam 2"),
])
def test_generate_decoding_options_are_checked(trained, args, fragment):
    data, ckpt = trained
    p = generate(data, ckpt, *args, check=False)
    assert_one_line(p, "fairseq-generate", fragment)


# --------------------------------------------------------------------------- the other commands' outputs
def test_outputs_of_score_table_benchmark_baselines_are_checked_first(trained, tmp_path):
    data, ckpt = trained
    from fairseq_nar_caption.data.manifest import read_manifest, write_coco_refs

    refs = str(tmp_path / "refs.json")
    write_coco_refs(refs, read_manifest(os.path.join(data, "test.tsv")))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": str(i), "caption": "a red circle"} for i in range(20, 24)]))
    foreign = tmp_path / "notes.md"
    foreign.write_text("my notes\n")
    before = digests(data, refs, results, foreign, ckpt)
    score = [os.path.join(BIN, "nar-caption-score"), "--refs", refs, "--results", results, "--metrics", "CIDEr-D"]
    p = run_cli(score + ["--json-out", results], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-score", "results.json: is also an input of this command")
    p = run_cli(score + ["--json-out", foreign], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-score", "notes.md: already exists and was not made by nar-caption-score")
    p = run_cli([os.path.join(BIN, "nar-caption-table"), results, "--out", foreign], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-table", "notes.md: already exists and was not made by nar-caption-table")
    p = run_cli([os.path.join(BIN, "nar-caption-baselines"), data, "--metrics", "CIDEr-D", "--json-out", foreign],
                check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-baselines", "notes.md: already exists and was not made by")
    bench = [os.path.join(BIN, "nar-caption-benchmark"), data, "--row", f"ar=--path {ckpt} --beam 1",
             "--warmup", "0", "--throughput-batch", "0", "--metrics", "CIDEr-D"]
    p = run_cli(bench + ["--out-md", foreign], check=False, env=ONE_THREAD)
    assert_one_line(p, "nar-caption-benchmark", "notes.md: already exists and was not made by nar-caption-benchmark")
    assert "[benchmark] loading" not in p.stderr
    for args, fragment in [(["--max-items", "0"], "argument --max-items: must be >= 1, got 0"),
                           (["--passes", "0"], "argument --passes: must be >= 1, got 0"),
                           (["--length-sweep", "8,,16"], "argument --length-sweep: expected comma-separated"),
                           (["--length-sweep", "1"], "argument --length-sweep: must be >= 2, got 1"),
                           (["--metrics", "CIDEr"], "unknown metric group(s) CIDEr")]:
        p = run_cli(bench + args, check=False, env=ONE_THREAD)
        assert_one_line(p, "nar-caption-benchmark", fragment, status=2)
    assert digests(data, refs, results, foreign, ckpt) == before
    # a second run replaces what the first wrote (made by the same command)
    out = tmp_path / "s.json"
    run_cli(score + ["--json-out", out], env=ONE_THREAD)
    run_cli(score + ["--json-out", out, "--name", "again"], env=ONE_THREAD)
    assert json.loads(out.read_text())["name"] == "again"
    assert not leftovers(tmp_path)


def test_score_names_references_that_lack_an_image(tmp_path):
    from fairseq_nar_caption.cli.score import score_files
    from fairseq_nar_caption.data.manifest import CaptionRow, write_coco_refs, write_manifest
    from fairseq_nar_caption.errors import DataError

    rows = [CaptionRow("a", "a red circle"), CaptionRow("b", "a blue square"), CaptionRow("c", "a green star")]
    write_manifest(str(tmp_path / "test.tsv"), rows)
    write_coco_refs(str(tmp_path / "short.json"), [rows[0], rows[2]])
    gen = tmp_path / "gen.txt"
    gen.write_text("".join(f"T-{i}\t{r.caption}\nH-{i}\t-0.5\t{r.caption}\n" for i, r in enumerate(rows)))
    with pytest.raises(DataError, match=r"short\.json: lacks the references of 1 item\(s\) of .*test\.tsv, e\.g\. \['b'\]"):
        score_files(str(tmp_path / "short.json"), str(gen), manifest=str(tmp_path / "test.tsv"), metrics=["CIDEr-D"])
    with pytest.raises(DataError, match=r"samples up to 2 were decoded, .*short\.json's images holds only 2 items: "
                                        r"it lacks items of the decoded split"):
        score_files(str(tmp_path / "short.json"), str(gen), metrics=["CIDEr-D"])
    # an image missing in the middle: the targets are the references of an earlier image
    write_coco_refs(str(tmp_path / "gap.json"), [rows[0], rows[2], CaptionRow("d", "a pink cross")])
    with pytest.raises(DataError, match=r"references missing an image"):
        score_files(str(tmp_path / "gap.json"), str(gen), metrics=["CIDEr-D"])


def test_preparation_scripts_write_no_file_they_did_not_make(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(USER_DIR), "scripts"))
    import prepare_msrvtt
    from test_prepare_video import write_videodatainfo

    write_videodatainfo(tmp_path / "info.json")
    out = tmp_path / "out"
    out.mkdir()
    (out / "dict.txt").write_text("my words 1\n")
    before = digests(tmp_path)
    with pytest.raises(SystemExit, match=r"out/dict\.txt: already exists and was not made by prepare_msrvtt; .*"
                                         r"--overwrite"):
        prepare_msrvtt.main(["--annotations", str(tmp_path / "info.json"), "--out", str(out)])
    assert digests(tmp_path) == before
    prepare_msrvtt.main(["--annotations", str(tmp_path / "info.json"), "--out", str(out), "--overwrite"])
    prepare_msrvtt.main(["--annotations", str(tmp_path / "info.json"), "--out", str(out)])  # its own files now
    assert (out / "train.tsv").exists() and not leftovers(out)
