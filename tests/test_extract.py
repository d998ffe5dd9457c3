"""From one's own images and videos to captions: nar-caption-extract, nar-caption-caption, the hub.

Real photographs that ship inside installed packages (matplotlib's grace_hopper.jpg,
scikit-learn's china.jpg and flower.jpg) are extracted with EfficientNet-Lite0's ImageNet
weights; a tiny AR model is trained on crops of them through fairseq-train and captions the
originals.  Tiny videos written by PyAV in the test go the same way with appearance + motion.
"""
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from conftest import BIN, USER_DIR, digests, run_cli, write_tsv
from fairseq_nar_caption.cli import caption as caption_cli
from fairseq_nar_caption.cli import extract as extract_cli
from fairseq_nar_caption.data import extraction
from fairseq_nar_caption.models.modules import extractors
from fairseq_nar_caption.errors import DataError

PHOTOS = {"grace_hopper": "a woman in a navy uniform", "china": "a temple under a blue sky",
          "flower": "a pink flower with green leaves"}
SIZE = ["--image-size", "96"]  # 3 x 3 grid of 1280: small and quick


def photo_paths():
    import matplotlib.cbook
    import sklearn.datasets

    skl = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    return {"grace_hopper": matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False),
            "china": os.path.join(skl, "china.jpg"), "flower": os.path.join(skl, "flower.jpg")}


def train(data, save, *extra):
    cmd = [os.path.join(BIN, "fairseq-train"), str(data), "--user-dir", USER_DIR, "--task", "captioning",
           "--arch", "ar_caption_tiny", "--embed-dim", "32", "--ffn-embed-dim", "64", "--encoder-layers", "1",
           "--decoder-layers", "1", "--dropout", "0.0", "--attention-dropout", "0.0",
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--optimizer", "adam",
           "--lr", "5e-3", "--batch-size", "8", "--required-batch-size-multiple", "1", "--num-workers", "0",
           "--disable-validation",
           "--no-epoch-checkpoints", "--save-dir", str(save), "--seed", "1", "--cpu", "--no-progress-bar", *extra]
    run_cli(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return save / "checkpoint_last.pt"


def finish_data_folder(data, captions):
    """The extraction folder + train.tsv from the manifest stub + dict.txt: a captioning data folder."""
    stub = (data / "items.tsv").read_text().splitlines()
    assert stub[0] == "item_id\tcaption"
    ids = [line.split("\t")[0] for line in stub[1:]]
    write_tsv(data / "train.tsv", [(i, captions[i]) for i in ids])
    words = sorted({w for c in captions.values() for w in c.split()})
    (data / "dict.txt").write_text("".join(f"{w} 1\n" for w in words))


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory):
    """Originals in photos/; 8 crops / flips of each (96 px) as the training images."""
    from PIL import Image, ImageOps

    root = tmp_path_factory.mktemp("photos")
    (root / "photos").mkdir()
    (root / "crops").mkdir()
    rng = np.random.default_rng(0)
    captions = {}
    for name, path in photo_paths().items():
        shutil.copy(path, root / "photos" / os.path.basename(path))
        im = Image.open(path).convert("RGB")
        w, h = im.size
        for k in range(8):
            cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
            x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            crop = im.crop((x, y, x + cw, y + ch)).resize((96, 96))
            (ImageOps.mirror(crop) if k % 2 else crop).save(root / "crops" / f"{name}_{k}.png")
            captions[f"{name}_{k}"] = PHOTOS[name]
    data = root / "data"
    extract_cli.cli_main([str(root / "crops"), "--out", str(data), *SIZE, "--batch-size", "8", "--no-progress"])
    finish_data_folder(data, captions)
    ckpt = train(data, root / "ckpt", "--max-update", "40")
    return root, data, ckpt


def store_content(path):
    """Everything an HDF5 store holds: file attributes, and per dataset its array and attributes."""
    with h5py.File(path, "r") as f:
        return ({k: f.attrs[k] for k in f.attrs},
                {k: (f[k][()].tobytes(), f[k].dtype.str, f[k].shape, dict(f[k].attrs)) for k in f})


# ----------------------------------------------------------------------------- images
def test_real_photos_extracted_in_the_captioning_layout(photo_model):
    root, data, _ = photo_model
    rec = json.loads((data / "extractor.json").read_text())
    assert rec["settings"]["backbone"] == "efficientnet-lite0" and rec["settings"]["image_size"] == 96
    assert rec["items"] == 24 and rec["tokens"] == [9] and rec["dim"] == 1280
    with h5py.File(data / "features.h5", "r") as f:
        assert sorted(f) == sorted(f"{n}_{k}" for n in PHOTOS for k in range(8))
        assert json.loads(f.attrs["extractor_settings"]) == rec["settings"]
        a = f["china_0"][()]
        assert a.dtype == np.float32 and a.shape == (9, 1280) and np.isfinite(a).all() and a.std() > 0
    assert not any(n.endswith(".partial") for n in os.listdir(data))
    # the features are the ImageNet backbone's: crops of one photo are nearer each other than to other photos
    with h5py.File(data / "features.h5", "r") as f:
        pooled = {k: f[k][()].mean(0) for k in f}
    cos = lambda u, v: float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # noqa: E731
    for n in PHOTOS:
        same = np.mean([cos(pooled[f"{n}_0"], pooled[f"{n}_{k}"]) for k in range(1, 8)])
        other = max(np.mean([cos(pooled[f"{n}_0"], pooled[f"{m}_{k}"]) for k in range(8)]) for m in PHOTOS if m != n)
        assert same > other, (n, same, other)


def test_cli_captions_real_photos_and_hub_gives_the_same(photo_model, tmp_path, capsys):
    from fairseq_nar_caption.hub import CaptionHub

    root, data, ckpt = photo_model
    out = tmp_path / "caps.json"
    caption_cli.cli_main([str(root / "photos"), "--path", str(ckpt), "--data", str(data), "--out", str(out),
                          "--", "--beam", "5", "--max-len-b", "12"])
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    results = json.loads(out.read_text())
    assert sorted(r["image_id"] for r in results) == sorted(PHOTOS)
    cli = {r["image_id"]: r["caption"] for r in results}
    assert cli == printed
    correct = sum(cli[n] == PHOTOS[n] for n in PHOTOS)
    assert correct >= 2, cli  # the full, uncropped photos: never seen in training
    hub = CaptionHub.from_pretrained(str(ckpt), str(data), ["--beam", "5", "--max-len-b", "12"])
    paths = [str(root / "photos" / os.path.basename(p)) for p in sorted(photo_paths().values())]
    ids = [extraction._item_id(p) for p in paths]
    batched = hub.caption_images(paths)
    assert batched == [cli[i] for i in ids]
    assert [hub.caption_images([p])[0] for p in paths] == batched  # batch-invariant
    assert hub.caption_images(paths, batch_size=2) == batched
    assert hub.caption_images(paths[::-1]) == batched[::-1]  # order-invariant
    # features extracted separately and captioned from the file: the same again
    extract_cli.cli_main([str(root / "photos"), "--out", str(tmp_path / "feats"), *SIZE, "--no-progress"])
    assert hub.caption_feature_files([str(tmp_path / "feats" / "features.h5")]) == {i: cli[i] for i in sorted(ids)}
    with pytest.raises(DataError, match="trained on image features"):
        hub.caption_videos(paths[:1])


def test_features_of_another_extractor_are_refused(photo_model, tmp_path):
    root, data, ckpt = photo_model
    extract_cli.cli_main([str(root / "photos"), "--out", str(tmp_path / "f64"), "--image-size", "64", "--no-progress"])
    with pytest.raises(SystemExit) as e:
        caption_cli.cli_main(["--features", str(tmp_path / "f64" / "features.h5"), "--path", str(ckpt),
                              "--data", str(data), "--out", str(tmp_path / "x.json")])
    msg = str(e.value)
    assert "f64/features.h5" in msg and "another extractor" in msg and "image_size: 64 vs 96" in msg
    assert "\n" not in msg and not (tmp_path / "x.json").exists()
    # the same folder extended with other settings: the 64 px outputs are left as they are, the
    # 96 px ones go beside them under tagged names with their own record
    before = digests(*(tmp_path / "f64" / n for n in ("features.h5", "extractor.json", "items.tsv")))
    extract_cli.cli_main([str(root / "photos"), "--out", str(tmp_path / "f64"), "--image-size", "96",
                          "--no-progress"])
    assert digests(*before) == before
    rec = json.loads((tmp_path / "f64" / "extractor.efficientnet-lite0-96.json").read_text())
    assert rec["settings"]["image_size"] == 96 and rec["stores"] == ["features.efficientnet-lite0-96.h5"]
    with h5py.File(tmp_path / "f64" / "features.efficientnet-lite0-96.h5", "r") as f:
        assert json.loads(f.attrs["extractor_settings"])["image_size"] == 96


def test_resume_after_interruption_gives_the_same_store(photo_model, tmp_path, monkeypatch, capsys):
    root, _, _ = photo_model
    src = [str(root / "crops")]
    extract_cli.cli_main([*src, "--out", str(tmp_path / "whole"), *SIZE, "--batch-size", "5", "--no-progress"])
    calls = {"n": 0}
    real = extraction.item_features

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extraction, "item_features", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        extract_cli.cli_main([*src, "--out", str(tmp_path / "resumed"), *SIZE, "--batch-size", "5", "--no-progress"])
    monkeypatch.setattr(extraction, "item_features", real)
    partial = tmp_path / "resumed" / "features.h5.partial"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 130 and line == (f"nar-caption-extract: interrupted (Ctrl-C); 10 finished item(s) are "
                                            f"kept in {partial}: run the same command again to continue")
    assert not (tmp_path / "resumed" / "features.h5").exists() and partial.exists()
    with h5py.File(partial, "a") as f:
        assert len(f) == 10  # two batches of 5 done
        f.create_dataset("grace_hopper_7", data=np.zeros((9, 1280), np.float32))  # as if killed mid-write: no mark
    extract_cli.cli_main([*src, "--out", str(tmp_path / "resumed"), *SIZE, "--batch-size", "5", "--no-progress"])
    assert not partial.exists()
    assert store_content(tmp_path / "resumed" / "features.h5") == store_content(tmp_path / "whole" / "features.h5")
    for name in ("extractor.json", "items.tsv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_corrupt_image_is_refused_by_name_and_nothing_half_written(photo_model, tmp_path):
    root, _, _ = photo_model
    folder = tmp_path / "in"
    folder.mkdir()
    for n in ("china_0", "flower_0"):
        shutil.copy(root / "crops" / f"{n}.png", folder)
    jpg = open(photo_paths()["grace_hopper"], "rb").read()
    (folder / "half.jpg").write_bytes(jpg[: len(jpg) // 2])  # truncated download
    (folder / "notes.png").write_text("not an image\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        extract_cli.cli_main([str(folder), "--out", str(out), *SIZE, "--batch-size", "1", "--no-progress"])
    msg = str(e.value)
    assert msg.startswith("nar-caption-extract: error: ") and "half.jpg: not a decodable image" in msg
    assert "\n" not in msg
    assert not (out / "features.h5").exists() and not (out / "items.tsv").exists()
    with h5py.File(out / "features.h5.partial", "r") as f:
        assert sorted(f) == ["china_0", "flower_0"] and all(f[k].attrs["complete"] for k in f)
    (folder / "half.jpg").unlink()
    with pytest.raises(SystemExit, match=r"notes.png: not a decodable image"):
        extract_cli.cli_main([str(folder), "--out", str(out), *SIZE, "--no-progress"])


# ----------------------------------------------------------------------------- videos
def write_video(path, colour, direction, frames=10, size=48):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for t in range(frames):
            img = np.full((size, size, 3), 235, np.uint8)
            x = 4 + (t * 3 if direction > 0 else 30 - t * 3)
            img[16:32, x:x + 12] = colour
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def test_videos_extract_to_appearance_and_motion_and_caption(tmp_path):
    from fairseq_nar_caption.hub import CaptionHub

    clips = tmp_path / "clips"
    clips.mkdir()
    kinds = {"red_right": ((220, 30, 30), 1, "a red box moves right"),
             "red_left": ((220, 30, 30), -1, "a red box moves left"),
             "blue_right": ((30, 30, 220), 1, "a blue box moves right"),
             "blue_left": ((30, 30, 220), -1, "a blue box moves left")}
    captions = {}
    for name, (colour, d, cap) in kinds.items():
        write_video(clips / f"{name}.mp4", colour, d)
        captions[name] = cap
    data = tmp_path / "data"
    extract_cli.cli_main([str(clips), "--out", str(data), "--media", "video", "--frames", "4", *SIZE,
                          "--batch-size", "3", "--no-progress"])
    rec = json.loads((data / "extractor.json").read_text())
    assert rec["stores"] == ["appearance.h5", "motion.h5"] and rec["tokens"] == [4, 4]
    assert rec["settings"]["media"] == "video" and rec["settings"]["frames"] == 4
    with h5py.File(data / "appearance.h5", "r") as fa, h5py.File(data / "motion.h5", "r") as fm:
        a, m = fa["red_left"][()], fm["red_left"][()]
        assert a.shape == m.shape == (4, 1280)
        np.testing.assert_allclose(m[1:], a[1:] - a[:-1], atol=1e-5)  # motion = appearance differences
        assert np.abs(m).sum(1).min() > 0  # the box moves in every step: no zero rows
    finish_data_folder(data, captions)
    ckpt = train(data, tmp_path / "ckpt", "--feature-files", "appearance.h5,motion.h5", "--max-update", "30")
    out = tmp_path / "v.json"
    caption_cli.cli_main([str(clips / "red_left.mp4"), str(clips / "blue_right.mp4"), "--path", str(ckpt),
                          "--data", str(data), "--out", str(out), "--", "--beam", "2", "--max-len-b", "8"])
    cli = {r["image_id"]: r["caption"] for r in json.loads(out.read_text())}
    vocab = {w for c in captions.values() for w in c.split()}
    assert list(cli) == ["red_left", "blue_right"] and all(c and set(c.split()) <= vocab for c in cli.values())
    hub = CaptionHub.from_pretrained(str(ckpt), str(data), ["--beam", "2", "--max-len-b", "8",
                                                            "--feature-files", "appearance.h5,motion.h5"])
    paths = [str(clips / "red_left.mp4"), str(clips / "blue_right.mp4")]
    assert hub.caption_videos(paths) == list(cli.values()) == [hub.caption_videos([p])[0] for p in paths]
    # a file that is not a video is refused by name
    (clips / "readme.mp4").write_text("not a video\n")
    with pytest.raises(DataError, match=r"readme.mp4: not a decodable video"):
        hub.caption_videos([str(clips / "readme.mp4")])
    more = tmp_path / "more"
    with pytest.raises(SystemExit, match=r"readme.mp4: not a decodable video"):
        extract_cli.cli_main([str(clips), "--out", str(more), "--media", "video", "--frames", "4", *SIZE,
                              "--no-progress"])
    assert not (more / "appearance.h5").exists() and not (more / "motion.h5").exists()
    for name in ("appearance.h5.partial", "motion.h5.partial"):
        with h5py.File(more / name, "r") as f:  # the batch before: complete; readme's batch: nothing
            assert sorted(f) == ["blue_left", "blue_right"]


# ----------------------------------------------------------------------------- CLIP
def test_clip_backbone_from_a_local_folder(tmp_path):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip")
    folder = tmp_path / "in"
    folder.mkdir()
    for p in photo_paths().values():
        shutil.copy(p, folder)
    extract_cli.cli_main([str(folder), "--out", str(tmp_path / "out"), "--backbone", "clip",
                          "--clip-weights", str(tmp_path / "clip"), "--no-progress"])
    rec = extraction.read_record(str(tmp_path / "out"))
    assert rec["settings"]["backbone"] == "clip" and rec["tokens"] == [16] and rec["dim"] == 32
    assert len(rec["settings"]["weights_sha256"]) == 64
    with h5py.File(tmp_path / "out" / "features.h5", "r") as f:
        assert f["china"].shape == (16, 32)
    extractors.extractor_from_record(rec, "rec")  # the recorded folder rebuilds the same extractor
    torch.manual_seed(1)  # other weights in the same folder: another extractor
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip")
    with pytest.raises(DataError, match="weights_sha256"):
        extractors.extractor_from_record(rec, "rec")


# ----------------------------------------------------------------------------- RDT
def test_rdt_captions_new_photos_conditioned_on_the_ranker(photo_model, tmp_path):
    """An RDT model's condition for a new image comes from the ranker nar-caption-retrieve saved."""
    from fairseq_nar_caption.cli import retrieve
    from fairseq_nar_caption.hub import CaptionHub

    root, data, _ = photo_model
    ret = tmp_path / "retrieval.json"
    retrieve.cli_main([str(data), "--splits", "train", "--k", "3", "--out", str(ret)])
    assert (tmp_path / "retrieval.ranker.npz").exists()
    cmd = [os.path.join(BIN, "fairseq-train"), str(data), "--user-dir", USER_DIR, "--task", "captioning", "--generator", "diffusion",
           "--retrieval-file", str(ret), "--arch", "rdt_tiny", "--embed-dim", "32", "--ffn-embed-dim", "64",
           "--attention-heads", "2", "--criterion", "rdt_loss", "--optimizer", "adam", "--lr", "3e-3",
           "--batch-size", "8", "--required-batch-size-multiple", "1", "--num-workers", "0", "--disable-validation",
           "--no-epoch-checkpoints", "--max-update", "15", "--save-dir", str(tmp_path / "rdt"), "--seed", "1",
           "--cpu", "--no-progress-bar"]
    run_cli(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = tmp_path / "rdt" / "checkpoint_last.pt"
    gen = ["--task", "captioning", "--generator", "diffusion", "--retrieval-file", str(ret), "--diffusion-steps", "3"]
    out = tmp_path / "caps.json"
    caption_cli.cli_main([str(root / "photos"), "--path", str(ckpt), "--data", str(data), "--out", str(out),
                          "--", *gen])
    cli = {r["image_id"]: r["caption"] for r in json.loads(out.read_text())}
    hub = CaptionHub.from_pretrained(str(ckpt), str(data), gen)
    paths = [str(root / "photos" / os.path.basename(p)) for p in photo_paths().values()]
    ids = [extraction._item_id(p) for p in paths]
    assert hub.caption_images(paths) == [cli[i] for i in ids] == [hub.caption_images([p])[0] for p in paths]
    assert hub.caption_images(paths[::-1]) == [cli[i] for i in ids[::-1]]  # diffusion noise: not by position
    # the condition: the ranker's top-1 training sentence for each full photo (no own captions to exclude)
    import torch

    pooled = torch.from_numpy(np.stack([hub.ranker.pool_array(a) for a in hub.extract(paths, "image")]))
    top1 = [r[0] for r in hub.ranker.rank(pooled, 1)]
    assert sum(t == PHOTOS[i] for t, i in zip(top1, ids)) >= 2, top1


# ----------------------------------------------------------------------------- NARVL (pixels)
def test_narvl_captions_image_files_as_its_own_dataset_reads_them(tmp_path, monkeypatch):
    """A vision_language model has no extractor: the hub hands each file to the task's own image
    loader; the captions equal those of the same images decoded through a split of the data folder."""
    import sys

    import torch
    from conftest import REPO
    from fairseq_nar_caption import inference
    from fairseq_nar_caption.data.toy import ToyConfig, generate
    from fairseq_nar_caption.hub import CaptionHub

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import prepare_vl_toy

    generate(str(tmp_path / "toy"), ToyConfig(seed=4, n_images=(40, 3, 3), n_videos=(2, 1, 1)), log=lambda s: None)
    prepare_vl_toy.build(str(tmp_path / "toy" / "images"), str(tmp_path / "vl"), 200, 16)
    task = ["--task", "vision_language", "--vl-task", "caption", "--image-dir", "../toy/images/pixels",
            "--patch-image-size", "64", "--num-bins", "16", "--max-target-positions", "64"]
    run_cli([os.path.join(BIN, "fairseq-train"), str(tmp_path / "vl"), "--user-dir", USER_DIR, *task,
                    "--arch", "narvl_tiny", "--num-queries", "64", "--criterion", "query_ctc", "--optimizer", "adam",
                    "--lr", "2e-3", "--batch-size", "4", "--max-update", "2", "--save-dir", str(tmp_path / "ck"),
                    "--num-workers", "0", "--disable-validation", "--no-epoch-checkpoints", "--no-progress-bar",
                    "--seed", "1", "--cpu"], env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = str(tmp_path / "ck" / "checkpoint_last.pt")
    gen = [*task, "--generator", "ctc"]
    seen = []  # the model inputs of every decoded batch
    real = inference.decode_batch
    monkeypatch.setattr(inference, "decode_batch", lambda loaded, sample: seen.append(sample["net_input"])
                        or real(loaded, sample))
    loaded = inference.load(str(tmp_path / "vl"), ["--path", ckpt, *gen, "--cpu"])
    loaded.task.load_dataset("test")
    ds = loaded.task.dataset("test")
    expected = inference.decode_dataset(loaded, ds, batch_size=8)
    pixels = tmp_path / "toy" / "images" / "pixels"
    ids = [r.image_id for r in ds.rows]
    hub = CaptionHub.from_pretrained(ckpt, str(tmp_path / "vl"), gen)
    assert hub.media() == "image"
    got = hub.caption_images([str(pixels / f"{i}.png") for i in ids])
    assert got == [expected[r.uniq_id] for r in ds.rows]
    # (a model this short-trained says much the same for every image: compare its inputs too)
    assert len(seen) == 2 and seen[0]["patch_images"].shape == (3, 3, 64, 64)
    for key in ("patch_images", "src_tokens", "src_lengths"):
        assert torch.equal(seen[0][key], seen[1][key]), key
    assert hub.caption_images([str(pixels / f"{ids[-1]}.png")]) == got[-1:]  # batch-invariant
    out = tmp_path / "c.json"
    caption_cli.cli_main([str(pixels / f"{i}.png") for i in ids] + ["--path", ckpt, "--data", str(tmp_path / "vl"),
                                                                     "--out", str(out), "--", *gen])
    assert [r["caption"] for r in json.loads(out.read_text())] == got
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="bad.png: not a decodable image"):
        hub.caption_images([str(tmp_path / "bad.png")])
