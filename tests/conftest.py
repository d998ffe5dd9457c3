import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "fairseq_nar_caption")
BIN = os.path.dirname(sys.executable)  # .venv/bin: fairseq-train, fairseq-generate


def run_cli(cmd, timeout=600, check=True, **kwargs):
    """``subprocess.run(cmd)`` with a timeout: a hung command (e.g. a fairseq-train that never
    exits) fails this one test naming its command line instead of stalling the run.

    Output is captured as text unless the caller redirects stdout/stderr itself.  ``check``:
    a non-zero exit fails the test with the command line and the end of its stderr."""
    cmd = [str(c) for c in cmd]
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        p = subprocess.run(cmd, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {timeout} s: {shlex.join(cmd)}", pytrace=False)
    if check and p.returncode != 0:
        err = p.stderr if isinstance(p.stderr, str) else ""
        pytest.fail(f"exit {p.returncode}: {shlex.join(cmd)}\n{err[-3000:]}", pytrace=False)
    return p


def make_dictionary(words):
    """A fairseq Dictionary of ``words`` plus the captioning task's reserved symbols."""
    from fairseq.data import Dictionary
    from fairseq_nar_caption.data.text import RESERVED_SYMBOLS

    d = Dictionary()
    for w in list(words) + list(RESERVED_SYMBOLS):
        d.add_symbol(w)
    return d


def write_h5(path, arrays):
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def write_tsv(path, rows, header=("item_id", "caption")):
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")


def decode_batched_and_single(data, generate_args, max_items=None, batch_size=40):
    """A checkpoint's test split decoded at ``batch_size`` and one item at a time (the first
    ``max_items``), as {item id: caption} each, through the one decode loop (inference.py)."""
    from fairseq_nar_caption import inference

    loaded = inference.load(str(data), generate_args)
    loaded.task.load_dataset("test")
    ds = loaded.task.dataset("test")
    batched = inference.decode_dataset(loaded, ds, batch_size=batch_size)
    single = inference.decode_dataset(loaded, ds, batch_size=1, max_items=max_items)
    return loaded, batched, single


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors on 2 shared cores: a second torch thread only contends (up to 10x slower).
    (fairseq-train/-generate subprocesses of the tests set their own threads.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_data(tmp_path):
    """A 3-item caption folder: features.h5 (4 x 6 per item), train/test manifests, dict.txt."""
    rng = np.random.default_rng(0)
    write_h5(tmp_path / "features.h5", {str(i): rng.normal(size=(4, 6)).astype("float32") for i in (1, 2, 3)})
    write_tsv(tmp_path / "train.tsv", [("1", "a red circle"), ("1", "a red ball"), ("2", "a blue square"),
                                       ("3", "a blue circle")])
    write_tsv(tmp_path / "test.tsv", [("3", "a blue circle"), ("2", "a blue box"), ("3", "one blue circle")])
    (tmp_path / "dict.txt").write_text("".join(f"{w} 1\n" for w in "a red circle ball blue square".split()))
    return tmp_path


# --------------------------------------------------------------------------- data safety
def digests(*roots):
    """{path: sha256} of every file under ``roots`` (files or folders): compare before and after a
    command to show that it left its inputs byte-identical."""
    import hashlib

    out = {}
    for root in roots:
        root = str(root)
        paths = [root] if os.path.isfile(root) else [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        for p in paths:
            if os.path.islink(p):  # a link (maybe dangling or looping): its target, never followed
                out[p] = "link -> " + os.readlink(p)
                continue
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).hexdigest()
    return out


def file_size_limit(nbytes):
    """``preexec_fn`` for a subprocess whose files cannot grow beyond ``nbytes`` (RLIMIT_FSIZE;
    SIGXFSZ ignored, so a write past it fails with EFBIG): a full disk, without mounting one."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def assert_one_line(p, prog, *fragments, status=1):
    """Exit ``status``, the last stderr line starts with '<prog>: ' and holds every fragment, no traceback."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    assert p.returncode == status, (p.returncode, p.stderr[-2000:])
    assert line.startswith(f"{prog}: "), p.stderr[-2000:]
    for frag in fragments:
        assert frag in line, line
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    return line
