"""Write the toy benchmark to disk: pixels, features, manifests, references, VL items.

Generation is a pure function of ``ToyConfig``: every item draws from its own
generators, seeded with (seed, modality, item index, purpose), so the same
config gives byte-identical text/JSON files, PNGs and feature arrays (HDF5
written with ``track_times=False``).  Output goes to a temporary folder beside
``out_dir`` that replaces it only once complete, with ``stamp.json`` recording the
config: a later run with the same config finds it up to date and does nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import h5py
import numpy as np
from PIL import Image

from ...errors import OutputError
from .. import manifest, text
from . import captions, features, scenes, vl

GENERATOR = "fairseq_nar_caption.data.toy"
VERSION = 1  # bump whenever the output for a given config changes
STAMP = "stamp.json"
SPLITS = ("train", "val", "test")
IMAGE_CAPTIONS = 5
VIDEO_CAPTIONS = 10
VQA_PER_IMAGE = 2
FEATURE_BATCH = 128

# Generator streams: modality, then purpose (so e.g. a grammar change leaves pixels alone).
_IMAGES, _VIDEOS = 0, 1
_SCENE, _RENDER, _CAPTIONS, _VL = range(4)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    seed: int = 1
    n_images: Tuple[int, int, int] = (2000, 250, 250)  # train, val, test
    n_videos: Tuple[int, int, int] = (1000, 150, 150)
    feature_dim: int = 128

    def validate(self) -> None:
        for name in ("n_images", "n_videos"):
            sizes = getattr(self, name)
            if len(sizes) != len(SPLITS) or min(sizes) < 1:
                raise ValueError(f"{name} must give a positive size for each of {SPLITS}, got {sizes}")
        features.check_dim(self.feature_dim)

    def stamp(self) -> str:
        """Contents of ``stamp.json``: the generator version and this config."""
        return json.dumps({"generator": GENERATOR, "version": VERSION, **dataclasses.asdict(self)}, indent=1) + "\n"


def _rng(cfg: ToyConfig, modality: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, modality, index, purpose])


def _split_indices(sizes: Sequence[int]) -> Iterable[Tuple[str, range]]:
    """Consecutive global item indices per split: train first, then val, then test."""
    start = 0
    for split, n in zip(SPLITS, sizes):
        yield split, range(start, start + n)
        start += n


def generate(out_dir: str, cfg: ToyConfig, force: bool = False, log: Callable[[str], None] = print) -> bool:
    """Build the benchmark in ``out_dir``; returns False (and does nothing) if it is up to date."""
    cfg.validate()
    stamp_path = os.path.join(out_dir, STAMP)
    if os.path.exists(out_dir) and not force:
        if os.path.isfile(stamp_path):
            with open(stamp_path, encoding="utf-8") as f:
                if f.read() == cfg.stamp():
                    log(f"{out_dir}: up to date")
                    return False
        elif not os.path.isdir(out_dir) or os.listdir(out_dir):
            raise OutputError(f"{out_dir}: exists but has no {STAMP} (not made by nar-caption-toy-data); "
                              "choose another --out, or pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        image_vocab = _write_images(os.path.join(tmp, "images"), cfg, log)
        video_vocab = _write_videos(os.path.join(tmp, "videos"), cfg, log)
        _write_text(os.path.join(tmp, "README.md"), _readme(cfg, image_vocab, video_vocab))
        _write_text(os.path.join(tmp, STAMP), cfg.stamp())
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{out_dir}: written (image vocabulary {image_vocab}, video vocabulary {video_vocab} words)")
    return True


def _replace_dir(new: str, target: str) -> None:
    """Move the finished folder ``new`` to ``target``, removing what was there."""
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}.old-",
                               dir=os.path.dirname(os.path.abspath(target)))
        os.rename(target, os.path.join(old, "previous"))
        os.rename(new, target)
        shutil.rmtree(old)
    else:
        os.rename(new, target)


# --------------------------------------------------------------------------- writers
def _write_text(path: str, content: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(content)


def _write_tsv(path: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    _write_text(path, "".join("\t".join(r) + "\n" for r in [header, *rows]))


def _write_per_item_json(path: str, items: Dict[str, object]) -> None:
    """A JSON object with one item per line: compact yet readable and diff-friendly."""
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in items.items()]
    _write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


def _caption_rows(captions_by_item: Dict[str, List[str]]) -> List[manifest.CaptionRow]:
    """Manifest rows through the real-data text path: normalise, then tag with NLTK."""
    pairs = [(item, text.normalize_caption(c)) for item, caps in captions_by_item.items() for c in caps]
    tags = text.pos_tag_captions([c.split() for _, c in pairs])
    return [manifest.CaptionRow(item, c, " ".join(t)) for (item, c), t in zip(pairs, tags)]


def _write_captions(root: str, split: str, caps: Dict[str, List[str]], cfg: ToyConfig, modality: str) -> List[str]:
    """Write ``<split>.tsv`` (and the references for val/test); returns the normalised captions."""
    rows = _caption_rows(caps)
    manifest.write_manifest(os.path.join(root, f"{split}.tsv"), rows)
    if split != "train":
        manifest.write_coco_refs(os.path.join(root, f"{split}_refs.json"), rows, info={
            "description": f"toy {modality} captions, {split} split", "generator": GENERATOR,
            "version": VERSION, "seed": cfg.seed})
    return [r.caption for r in rows]


class _FeatureWriter:
    """Buffers items and writes their features, one HDF5 dataset per item id, in batches."""

    def __init__(self, paths: Sequence[str], compute: Callable[[np.ndarray], Sequence[np.ndarray]]):
        self.files = [h5py.File(p, "w") for p in paths]
        self.compute = compute
        self.ids: List[str] = []
        self.arrays: List[np.ndarray] = []

    def add(self, item_id: str, pixels: np.ndarray) -> None:
        self.ids.append(item_id)
        self.arrays.append(pixels)
        if len(self.ids) == FEATURE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        for f, feats in zip(self.files, self.compute(np.stack(self.arrays))):
            for item_id, feat in zip(self.ids, feats):
                f.create_dataset(item_id, data=feat, track_times=False)
        self.ids, self.arrays = [], []

    def close(self) -> None:
        self.flush()
        for f in self.files:
            f.close()


def _write_images(root: str, cfg: ToyConfig, log: Callable[[str], None]) -> int:
    os.makedirs(os.path.join(root, "pixels"))
    feats = _FeatureWriter([os.path.join(root, "features.h5")],
                           lambda px: [features.image_features(px, cfg.feature_dim)])
    scene_json: Dict[str, object] = {}
    vocab = 0
    try:
        for split, indices in _split_indices(cfg.n_images):
            caps: Dict[str, List[str]] = {}
            vqa, grounding, entailment = [], [], []
            for idx in indices:
                item = str(idx + 1)  # COCO-like integer ids, unique across splits
                objs = scenes.sample_image_scene(_rng(cfg, _IMAGES, idx, _SCENE))
                pixels = scenes.render_image(objs, _rng(cfg, _IMAGES, idx, _RENDER))
                Image.fromarray(pixels).save(os.path.join(root, "pixels", f"{item}.png"), format="PNG")
                feats.add(item, pixels)
                scene_json[item] = [o.to_json() for o in objs]
                caps[item] = captions.image_captions(_rng(cfg, _IMAGES, idx, _CAPTIONS), objs, IMAGE_CAPTIONS,
                                                     where=f"image {item}")
                rng = _rng(cfg, _IMAGES, idx, _VL)
                for k, (question, answers) in enumerate(vl.vqa_items(rng, objs, VQA_PER_IMAGE)):
                    vqa.append((f"{item}_{k}", item, question, answers))
                expression, box = vl.grounding_item(rng, objs)
                grounding.append((f"{item}_0", item, expression, ",".join(map(str, box))))
                hypothesis, label = vl.entailment_item(rng, objs)
                entailment.append((f"{item}_0", item, hypothesis, label))
            split_caps = _write_captions(root, split, caps, cfg, "image")
            if split == "train":
                vocab = len(text.build_dictionary(split_caps, os.path.join(root, "dict.txt")))
            _write_tsv(os.path.join(root, f"vqa_{split}.tsv"), ("uniq_id", "image_id", "question", "answers"), vqa)
            _write_tsv(os.path.join(root, f"grounding_{split}.tsv"), ("uniq_id", "image_id", "text", "box"), grounding)
            _write_tsv(os.path.join(root, f"entailment_{split}.tsv"), ("uniq_id", "image_id", "hypothesis", "label"),
                       entailment)
            log(f"images/{split}: {len(indices)} images, {sum(map(len, caps.values()))} captions")
    finally:
        feats.close()
    _write_per_item_json(os.path.join(root, "scenes.json"), scene_json)
    return vocab


def _write_videos(root: str, cfg: ToyConfig, log: Callable[[str], None]) -> int:
    os.makedirs(root)
    feats = _FeatureWriter([os.path.join(root, "appearance.h5"), os.path.join(root, "motion.h5")],
                           lambda frames: features.video_features(frames, cfg.feature_dim))
    scene_json: Dict[str, object] = {}
    vocab = 0
    try:
        for split, indices in _split_indices(cfg.n_videos):
            caps: Dict[str, List[str]] = {}
            for idx in indices:
                item = f"video{idx}"  # MSR-VTT-like ids
                objs = scenes.sample_video_scene(_rng(cfg, _VIDEOS, idx, _SCENE))
                feats.add(item, scenes.render_video(objs, _rng(cfg, _VIDEOS, idx, _RENDER)))
                scene_json[item] = [o.to_json() for o in objs]
                caps[item] = captions.video_captions(_rng(cfg, _VIDEOS, idx, _CAPTIONS), objs, VIDEO_CAPTIONS,
                                                     where=f"clip {item}")
            split_caps = _write_captions(root, split, caps, cfg, "video")
            if split == "train":
                vocab = len(text.build_dictionary(split_caps, os.path.join(root, "dict.txt")))
            log(f"videos/{split}: {len(indices)} clips, {sum(map(len, caps.values()))} captions")
    finally:
        feats.close()
    _write_per_item_json(os.path.join(root, "scenes.json"), scene_json)
    return vocab


def _readme(cfg: ToyConfig, image_vocab: int, video_vocab: int) -> str:
    ni, nv, d = cfg.n_images, cfg.n_videos, cfg.feature_dim
    return f"""# Toy captioning benchmark (synthetic)

Generated by `python -m fairseq_nar_caption.cli.make_toy_data --seed {cfg.seed} \\
  --n-images-train {ni[0]} --n-images-val {ni[1]} --n-images-test {ni[2]} \\
  --n-videos-train {nv[0]} --n-videos-val {nv[1]} --n-videos-test {nv[2]} --feature-dim {d}`
({GENERATOR} version {VERSION}).  The same arguments always give the same files.

## images/ (COCO-like; ids "1".."{sum(ni)}", train/val/test = {ni[0]}/{ni[1]}/{ni[2]})
96x96 renders of 1-3 flat-coloured shapes (6 shapes, 8 colours, 3 sizes, 3x3 layout;
about 1 in 8 multi-object images has two overlapping objects) on a lightly textured
grey background with pixel noise.
- `pixels/<id>.png`: the RGB renders.
- `features.h5`: per id a float32 `(64, {d})` array, an 8x8 grid of 12x12-pixel cells
  (row-major from the top left).  A stand-in for frozen CNN grid features computed
  from the pixels only: a fixed random ReLU layer over each cell's foreground map,
  edge-orientation histograms, cell colour statistics and the cell's coordinates.
- `scenes.json`: per id the objects in drawing order: shape, colour, size,
  box `[x0, y0, x1, y1]` (pixels, x1/y1 exclusive), occluded, position (3x3 region).
- `{{train,val,test}}.tsv`: caption manifests with NLTK POS tags, {IMAGE_CAPTIONS} captions per image.
- `{{val,test}}_refs.json`: COCO-format references (image ids as strings, manifest order).
- `dict.txt`: fairseq dictionary of the train captions ({image_vocab} words).
- `vqa_<split>.tsv` (uniq_id, image_id, question, answers as "conf|!+answer&&..."),
  `grounding_<split>.tsv` (uniq_id, image_id, text, box "x0,y0,x1,y1"),
  `entailment_<split>.tsv` (uniq_id, image_id, hypothesis, label).

## videos/ (MSR-VTT-like; ids "video0".."video{sum(nv) - 1}", train/val/test = {nv[0]}/{nv[1]}/{nv[2]})
Clips of 1-2 shapes that move left/right/up/down, grow, shrink, appear, disappear,
change colour or stay still, rendered at 64x64 as frames 0-8 (pixels not kept).
Feature row t (0-7) belongs to frame t+1:
- `appearance.h5`: per id float32 `(8, {d})`: descriptor of frame t+1.
- `motion.h5`: per id float32 `(8, {d})`: descriptor of the change from frame t to t+1.
- `scenes.json`: per id the objects: shape, colour and size at the start, event,
  change_frame (appear/disappear/turn: first feature row showing the change), new_colour,
  boxes (one per feature row, null while invisible).
- `{{train,val,test}}.tsv`, `{{val,test}}_refs.json`, `dict.txt` ({video_vocab} words):
  as for images, {VIDEO_CAPTIONS} captions per clip.
"""
