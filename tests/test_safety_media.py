"""Own images and videos, safely: nar-caption-extract / nar-caption-caption never destroy a user's
file, say every failure in one line, and check inputs, options and outputs before the work.

Each test keeps the digests of every input file (``digests``) and checks them afterwards.  Tiny
images are made here with PIL / numpy; EfficientNet-Lite0 runs at 32 px (a 1 x 1280 grid).
"""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import BIN, assert_one_line, digests, file_size_limit, run_cli, write_h5
from fairseq_nar_caption.cli import caption as caption_cli
from fairseq_nar_caption.cli import extract as extract_cli
from fairseq_nar_caption.data import extraction, images
from fairseq_nar_caption.models.modules import extractors
from fairseq_nar_caption.errors import DataError

EXTRACT = os.path.join(BIN, "nar-caption-extract")
CAPTION = os.path.join(BIN, "nar-caption-caption")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["--image-size", "32", "--no-progress"]
TAG = "efficientnet-lite0-32"


def make_images(folder, n, size=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"im{i:03d}.png")
    return folder


def in_process(cli_main, argv, capsys):
    """A console entry run here (the extractor stays loaded): (returncode, stdout, stderr) as a
    subprocess would give them."""
    capsys.readouterr()
    code, msg = 0, None
    try:
        cli_main([str(a) for a in argv])
    except SystemExit as e:
        code, msg = (e.code, None) if isinstance(e.code, int) else (1, str(e.code))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err + (msg + "\n" if msg else ""))


def complete_items(path):
    with h5py.File(path, "r") as f:
        return sorted(k for k in f if f[k].attrs.get("complete"))


# ----------------------------------------------------------------------------- a file that is not ours
def test_foreign_features_h5_stays_and_new_features_go_beside(tmp_path, capsys):
    """A data folder holding a features.h5 another program wrote (the toy benchmark's, say):
    extraction leaves it byte-identical, writes beside it under tagged names, resumes those on a
    rerun, and refuses (one line) when the tagged name is taken by a foreign file too."""
    from fairseq_nar_caption.hub import CaptionHub

    src = make_images(tmp_path / "photos", 5)
    out = tmp_path / "data"
    out.mkdir()
    write_h5(out / "features.h5", {str(i): np.ones((3, 4), np.float32) for i in range(7)})
    (out / "train.tsv").write_text("item_id\tcaption\n0\ta thing\n")
    before = digests(src, out)

    p = in_process(extract_cli.cli_main, [src, "--out", out, *SMALL], capsys)
    assert p.returncode == 0, p.stderr
    tagged = f"features.{TAG}.h5"
    assert p.stdout.strip().endswith(f"train with --feature-files {tagged}")
    assert f"{out / 'features.h5'} was not made by nar-caption-extract; writing {tagged} beside it" in p.stderr
    assert {k: v for k, v in digests(src, out).items() if k in before} == before  # the foreign files untouched
    assert complete_items(out / tagged) == [f"im{i:03d}" for i in range(5)]
    rec = json.loads((out / "extractor.json").read_text())  # extractor.json was free: the default name
    assert rec["stores"] == [tagged] and rec["items_file"] == "items.tsv" and rec["items"] == 5
    listing = sorted(os.listdir(out))

    # the same command again, over one more picture: the same tagged files, appended to, nothing else
    (src / "im005.png").write_bytes((src / "im000.png").read_bytes())
    p = in_process(extract_cli.cli_main, [src, "--out", out, *SMALL], capsys)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == listing
    assert len(complete_items(out / tagged)) == 6
    assert {k: v for k, v in digests(out).items() if k in before} == {k: v for k, v in before.items()
                                                                       if k.startswith(str(out))}

    # other settings: a record of their own beside the first one; the hub picks by the model's feature files
    p = in_process(extract_cli.cli_main, [src, "--out", out, "--image-size", "64", "--no-progress"], capsys)
    assert p.returncode == 0, p.stderr
    assert (out / "extractor.efficientnet-lite0-64.json").exists()
    assert (out / "items.efficientnet-lite0-64.tsv").exists()
    path32, rec32 = extraction.find_record(str(out), [tagged])
    path64, rec64 = extraction.find_record(str(out), [str(out / "features.efficientnet-lite0-64.h5")])
    assert (os.path.basename(path32), rec32["settings"]["image_size"]) == ("extractor.json", 32)
    assert (os.path.basename(path64), rec64["settings"]["image_size"]) == ("extractor.efficientnet-lite0-64.json", 64)
    assert extraction.find_record(str(out), ["features.h5"]) is None  # the foreign store has no record
    with pytest.raises(DataError, match="holds 2 extractor records: extractor.json .*efficientnet-lite0-64.json"):
        extraction.find_record(str(out))
    with pytest.raises(DataError, match="--feature-files"):  # two records, neither of features.h5: the user says which
        CaptionHub.from_pretrained(str(tmp_path / "no-model.pt"), str(out))
    hub = CaptionHub.__new__(CaptionHub)  # the record lookup of a loaded model, without training one
    hub.data, hub.pixels = str(out), False
    hub.loaded = SimpleNamespace(task=SimpleNamespace(cfg=SimpleNamespace(
        feature_files="features.efficientnet-lite0-64.h5")))
    assert hub.record()["settings"]["image_size"] == 64 and hub.media() == "image"
    hub.loaded.task.cfg.feature_files = "features.h5"
    with pytest.raises(DataError, match="no extractor record names the model's feature files"):
        hub.record()

    assert extraction.output_tag(dict(rec64["settings"], media="video", frames=8)) == "efficientnet-lite0-64-8f"
    assert extraction.output_tag({"backbone": "clip", "image_size": 224, "weights_sha256": "1a2b3c4d5e6f",
                                  "media": "image"}) == "clip-224-1a2b3c4d"

    # a tagged name taken by a foreign file as well: one line, nothing touched, nothing written
    other = tmp_path / "other"
    other.mkdir()
    write_h5(other / "features.h5", {"a": np.ones((1, 2), np.float32)})
    write_h5(other / tagged, {"b": np.ones((1, 2), np.float32)})
    before = digests(src, other)
    p = in_process(extract_cli.cli_main, [src, "--out", other, *SMALL], capsys)
    assert_one_line(p, "nar-caption-extract", f"{other / tagged} was not made by nar-caption-extract",
                    "nothing was written")
    assert digests(src, other) == before and sorted(os.listdir(other)) == sorted(["features.h5", tagged])


def test_a_failed_append_gives_the_finished_store_its_name_back(tmp_path, capsys):
    """A finished store is reopened to append to; the run stops (a bad picture) before finishing
    any new item: the store keeps its final name and content, nothing else is left."""
    src = make_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert in_process(extract_cli.cli_main, [src, "--out", out, *SMALL], capsys).returncode == 0
    kept = digests(out / "features.h5", out / "extractor.json", out / "items.tsv")
    (src / "im003.png").write_text("not a picture\n")
    p = in_process(extract_cli.cli_main, [src, "--out", out, *SMALL], capsys)
    assert_one_line(p, "nar-caption-extract", f"{src / 'im003.png'}: not a decodable image")
    assert digests(*kept) == kept and not (out / "features.h5.partial").exists()


# ----------------------------------------------------------------------------- pictures
def png48(path, rgb16):
    """A 48-bit RGB PNG (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_png_is_scaled_to_8_bits_not_white(tmp_path):
    grad = np.arange(65536, dtype=np.uint32).reshape(256, 256).astype(np.uint16)  # every 16-bit value
    Image.fromarray(grad).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"  # what PIL reads a 16-bit PNG as
    before = digests(tmp_path)
    rgb = np.asarray(extraction.load_image(str(tmp_path / "g16.png")))
    expected = (grad // 257).astype(np.uint8)
    assert rgb.shape == (256, 256, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))
    assert (rgb == 255).mean() < 0.01  # (read as before: 99.6 % white)
    # big-endian 16 bit, and 16-bit values in mode I from a PNG (older PIL): the same scaling
    im_b = Image.frombytes("I;16B", (256, 256), grad.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(images.to_rgb(im_b, "b.png"))[..., 0], expected)
    im_i = Image.fromarray(grad.astype(np.int32))
    im_i.format = "PNG"
    assert np.array_equal(np.asarray(images.to_rgb(im_i, "i.png"))[..., 1], expected)
    # 48-bit RGB: PIL reads the high bytes
    rgb16 = np.random.default_rng(0).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    png48(tmp_path / "c48.png", rgb16)
    assert np.array_equal(np.asarray(extraction.load_image(str(tmp_path / "c48.png"))), (rgb16 >> 8).astype(np.uint8))
    # the usual modes convert as before
    for mode in ("1", "L", "LA", "P", "RGBA", "CMYK", "YCbCr"):
        Image.new(mode, (4, 4)).save(tmp_path / f"m.{'jpg' if mode in ('CMYK', 'YCbCr') else 'png'}")
        assert extraction.load_image(str(tmp_path / f"m.{'jpg' if mode in ('CMYK', 'YCbCr') else 'png'}")).mode == "RGB"
    # the backbone sees the 16-bit picture as its 8-bit equivalent
    ex = extractors.EfficientNetExtractor(32)
    g16, _ = ex([extraction.load_image(str(tmp_path / "g16.png"))])
    g8, _ = ex([Image.fromarray(expected).convert("RGB")])
    assert np.array_equal(g16.numpy(), g8.numpy())
    assert {k: v for k, v in digests(tmp_path).items() if k in before} == before


def test_float_and_32_bit_images_are_refused_by_name_and_mode(tmp_path):
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "depth.tif")
    Image.fromarray((np.arange(64, dtype=np.int32) * 100000).reshape(8, 8)).save(tmp_path / "counts.tif")
    with pytest.raises(DataError, match=r"depth.tif: a floating-point image \(PIL mode F\)"):
        extraction.load_image(str(tmp_path / "depth.tif"))
    with pytest.raises(DataError, match=r"counts.tif: a 32-bit integer image \(PIL mode I\)"):
        extraction.load_image(str(tmp_path / "counts.tif"))
    src = make_images(tmp_path / "in", 2)
    (src / "depth.tif").write_bytes((tmp_path / "depth.tif").read_bytes())
    before = digests(src)
    out = tmp_path / "out"
    p = run_cli([EXTRACT, src, "--out", out, *SMALL], check=False, env=ENV)
    assert_one_line(p, "nar-caption-extract", f"{src / 'depth.tif'}: a floating-point image (PIL mode F)")
    assert digests(src) == before and not out.exists()  # nothing kept: the folder it made is gone too


# ----------------------------------------------------------------------------- input folders and lists
def test_dangling_and_looping_symlinks_are_named(tmp_path, capsys):
    src = make_images(tmp_path / "in", 2)
    before = digests(src)  # (digests cannot read the broken links made below)
    os.symlink("im000.png", src / "link.png")  # a good link is an input like any other
    os.symlink("nowhere.png", src / ".hidden.png")  # hidden: skipped, as documented
    assert [i for i, _ in extraction.list_media([str(src)])] == ["im000", "im001", "link"]
    os.symlink("nowhere.png", src / "gone.png")
    with pytest.raises(DataError, match=r"gone.png: a dangling symlink \(its target nowhere.png does not exist\)"):
        extraction.list_media([str(src)])
    loop = tmp_path / "loop"
    loop.mkdir()
    os.symlink("b.png", loop / "a.png")
    os.symlink("a.png", loop / "b.png")
    with pytest.raises(DataError, match=r"loop/a.png: a symlink loop"):
        extraction.list_media([str(loop)])
    lst = tmp_path / "list.txt"
    lst.write_text("in/im000.png\nloop/b.png\n")
    with pytest.raises(DataError, match=r"list.txt:2: .*loop/b.png: a symlink loop"):
        extraction.list_media([str(lst)])
    out = tmp_path / "out"
    p = in_process(extract_cli.cli_main, [src, "--out", out, *SMALL], capsys)
    assert_one_line(p, "nar-caption-extract", f"{src / 'gone.png'}: a dangling symlink")
    assert digests(*before) == before and not out.exists()
    assert sorted(os.listdir(src)) == [".hidden.png", "gone.png", "im000.png", "im001.png", "link.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_entry_is_named(tmp_path):
    src = make_images(tmp_path / "in", 2)
    os.chmod(src / "im001.png", 0)
    try:
        with pytest.raises(DataError, match=r"im001.png: not readable"):
            extraction.list_media([str(src)])
    finally:
        os.chmod(src / "im001.png", 0o644)


def test_list_file_with_a_byte_order_mark_is_accepted(tmp_path, capsys):
    src = make_images(tmp_path / "in", 2)
    lst = tmp_path / "list.txt"
    lst.write_bytes("\ufeff# my pictures\nin/im000.png\r\nsecond\tin/im001.png\r\n".encode("utf-8"))
    assert extraction.list_media([str(lst)]) == [("im000", str(tmp_path / "in/im000.png")),
                                                 ("second", str(tmp_path / "in/im001.png"))]
    before = digests(src, lst)
    p = in_process(extract_cli.cli_main, [lst, "--out", tmp_path / "out", *SMALL], capsys)
    assert p.returncode == 0, p.stderr
    assert complete_items(tmp_path / "out" / "features.h5") == ["im000", "second"]
    assert digests(src, lst) == before
    (tmp_path / "latin1.txt").write_bytes("in/im000.png\ncaf\xe9.png\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:2: not UTF-8"):
        extraction.list_media([str(tmp_path / "latin1.txt")])


# ----------------------------------------------------------------------------- options and output folders
@pytest.mark.parametrize("option", [["--image-size", "0"], ["--image-size", "16"], ["--batch-size", "-1"],
                                    ["--frames", "0"], ["--batch-size", "two"]])
def test_bad_option_values_are_one_line_exit_2_and_nothing_created(tmp_path, capsys, option):
    src = make_images(tmp_path / "in", 1)
    before = digests(src)
    p = in_process(extract_cli.cli_main, [src, "--out", tmp_path / "out", "--no-progress", *option], capsys)
    assert_one_line(p, "nar-caption-extract", f"argument {option[0]}", status=2)
    assert digests(src) == before and sorted(os.listdir(tmp_path)) == ["in"]


def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    src = make_images(tmp_path / "in", 1)
    p = in_process(extract_cli.cli_main, [src, "--out", tmp_path / "out", "--device", "cuda"], capsys)
    assert_one_line(p, "nar-caption-extract", "--device", "no CUDA device is available", status=2)
    p = in_process(caption_cli.cli_main, [src, "--path", "x.pt", "--data", tmp_path, "--device", "cuda"], capsys)
    assert_one_line(p, "nar-caption-caption", "no CUDA device is available", status=2)
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_out_folder_checked_before_the_work(tmp_path, capsys):
    src = make_images(tmp_path / "in", 2)
    before = digests(src)
    p = in_process(extract_cli.cli_main, [src, "--out", src, *SMALL], capsys)
    assert_one_line(p, "nar-caption-extract", f"{src}: is also an input folder")
    p = in_process(extract_cli.cli_main, [src, "--out", tmp_path / "missing" / "out", *SMALL], capsys)
    assert_one_line(p, "nar-caption-extract", f"the folder {tmp_path / 'missing'} does not exist")
    (tmp_path / "afile").write_text("x")
    p = in_process(extract_cli.cli_main, [src, "--out", tmp_path / "afile", *SMALL], capsys)
    assert_one_line(p, "nar-caption-extract", "exists and is not a folder")
    assert digests(src) == before and sorted(os.listdir(tmp_path)) == ["afile", "in"]
    # --out missing but its parent there: created
    p = in_process(extract_cli.cli_main, [src, "--out", tmp_path / "new", *SMALL], capsys)
    assert p.returncode == 0 and (tmp_path / "new" / "features.h5").exists()


# ----------------------------------------------------------------------------- a full disk
def test_full_disk_during_extraction_keeps_finished_items_and_resumes(tmp_path):
    """A file-size limit stands in for a full disk: the run stops before HDF5 writes a batch it
    cannot finish; the finished items stay in the partial store and the same command continues."""
    src = make_images(tmp_path / "in", 8)
    before = digests(src)
    out = tmp_path / "out"
    cmd = [EXTRACT, src, "--out", out, *SMALL, "--batch-size", "2"]
    p = run_cli(cmd, check=False, env=ENV, preexec_fn=file_size_limit(100_000))
    partial = out / "features.h5.partial"
    line = assert_one_line(p, "nar-caption-extract", f"error: {partial}: cannot write (the file size limit",
                           "finished item(s) are kept", "run the same command again to continue")
    kept = complete_items(partial)
    assert 0 < len(kept) < 8 and f"; {len(kept)} finished item(s)" in line
    assert not (out / "features.h5").exists() and not (out / "extractor.json").exists()
    assert digests(src) == before
    p = run_cli(cmd, check=False, env=ENV)  # room again: the same command continues
    assert p.returncode == 0, p.stderr
    assert complete_items(out / "features.h5") == [f"im{i:03d}" for i in range(8)] and not partial.exists()
    # no room even for the first batch: nothing is left, not even the folder the run made
    out2 = tmp_path / "out2"
    p = run_cli([EXTRACT, src, "--out", out2, *SMALL, "--batch-size", "2"], check=False, env=ENV,
                preexec_fn=file_size_limit(75_000))
    assert_one_line(p, "nar-caption-extract", f"{out2 / 'features.h5.partial'}: cannot write", "nothing was written")
    assert not out2.exists() and digests(src) == before


def test_a_write_hdf5_fails_anyway_is_one_line(tmp_path):
    """The check before each batch switched off: HDF5 itself hits the limit.  One line, no
    traceback, the damaged partial store removed, exit 1."""
    src = make_images(tmp_path / "in", 8)
    before = digests(src)
    out = tmp_path / "out"
    code = ("import sys\nfrom fairseq_nar_caption.data import extraction\nextraction.room_problem = lambda *a: None\n"
            "from fairseq_nar_caption.cli.extract import cli_main\ncli_main(sys.argv[1:])")
    p = run_cli([sys.executable, "-c", code, src, "--out", out, *SMALL, "--batch-size", "2"], check=False, env=ENV,
                preexec_fn=file_size_limit(30_000))
    assert_one_line(p, "nar-caption-extract", f"{out / 'features.h5.partial'}: cannot write (File too large)")
    assert not (out / "features.h5").exists() and digests(src) == before


# ----------------------------------------------------------------------------- nar-caption-caption's output
def test_caption_output_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    src = make_images(tmp_path / "in", 2)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not loaded: every check below comes first")
    data = tmp_path / "data"
    data.mkdir()
    (data / "dict.txt").write_text("a 1\n")
    (tmp_path / "mine.json").write_text("[]\n")
    before = digests(src, ckpt, data, tmp_path / "mine.json")
    monkeypatch.setattr(caption_cli, "caption", lambda *a, **k: pytest.fail("the model was loaded"))
    base = [src, "--path", ckpt, "--data", data]
    cases = [(["--out", src / "caps.json"], "lies in the input folder"),
             (["--out", tmp_path / "mine.json"], "already exists and was not made by nar-caption-caption"),
             (["--out", ckpt, "--overwrite"], "is also an input of this command"),
             (["--out", data / "dict.txt", "--overwrite"], "is also an input of this command"),
             (["--out", tmp_path / "missing" / "caps.json"], "does not exist")]
    for extra, fragment in cases:
        p = in_process(caption_cli.cli_main, [*base, *extra], capsys)
        assert_one_line(p, "nar-caption-caption", fragment)
    p = in_process(caption_cli.cli_main, [*base, "--batch-size", "0"], capsys)
    assert_one_line(p, "nar-caption-caption", "argument --batch-size", status=2)
    p = in_process(caption_cli.cli_main, ["--path", ckpt, "--data", data], capsys)
    assert_one_line(p, "nar-caption-caption", "INPUTS or --features", status=2)
    assert digests(src, ckpt, data, tmp_path / "mine.json") == before
    assert sorted(os.listdir(tmp_path)) == ["data", "in", "mine.json", "model.pt"]
    # its own earlier output is replaced; a foreign one with --overwrite
    monkeypatch.setattr(caption_cli, "caption", lambda *a, **k: {"im000": "a cat", "im001": "a dog"})
    for extra in (["--out", tmp_path / "caps.json"], ["--out", tmp_path / "caps.json"],
                  ["--out", tmp_path / "mine.json", "--overwrite"]):
        p = in_process(caption_cli.cli_main, [*base, *extra], capsys)
        assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "caps.json").read_text()) == [{"image_id": "im000", "caption": "a cat"},
                                                                  {"image_id": "im001", "caption": "a dog"}]


def test_caption_into_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    src = make_images(tmp_path / "in", 2)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    out = tmp_path / "caps.json"
    before = digests(src, ckpt)
    code = ("import sys\nfrom fairseq_nar_caption.cli import caption as c\n"
            "c.caption = lambda *a, **k: {'im000': 'a long caption of a cat on a mat ' * 4, 'im001': 'a dog'}\n"
            "c.cli_main(sys.argv[1:])")
    p = run_cli([sys.executable, "-c", code, src, "--path", ckpt, "--data", tmp_path, "--out", out], check=False,
                env=ENV, preexec_fn=file_size_limit(100))
    assert_one_line(p, "nar-caption-caption", f"{out}: cannot write (File too large)")
    assert not out.exists() and digests(src, ckpt) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".caps.json")]  # no temporary file left


# ----------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig,status,said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_signal_during_extraction_is_one_line_and_no_final_store(tmp_path, sig, status, said):
    src = make_images(tmp_path / "in", 150, size=48)
    before = digests(src)
    out = tmp_path / "out"
    partial = out / "features.h5.partial"
    proc = subprocess.Popen([EXTRACT, src, "--out", out, "--image-size", "224", "--batch-size", "2",
                             "--no-progress"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored
    try:
        deadline = time.time() + 120
        while not partial.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(1.0)  # a few batches into the work
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    p = SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr)
    line = assert_one_line(p, "nar-caption-extract", said, status=status)
    assert not (out / "features.h5").exists() and not (out / "extractor.json").exists()
    if partial.exists():  # finished batches are kept for the next run
        n = len(complete_items(partial))
        assert 0 < n < 150 and f"{n} finished item(s) are kept in {partial}: run the same command again" in line
    else:
        assert line.endswith("nothing was written")
    assert digests(src) == before
