"""Python API: load a trained caption model and caption images, videos or feature arrays.

    from fairseq_nar_caption.hub import CaptionHub
    hub = CaptionHub.from_pretrained("runs/mine/checkpoint_best.pt", data="data/mine")
    hub.caption_images(["photo.jpg"])            # -> ["a man in a suit ..."]
    hub.caption_videos(["clip.mp4"])             # a video model (appearance.h5,motion.h5 data)
    hub.caption([np.load("img.npy")])            # (N x D) arrays as stored in the feature files

``data`` is the folder the model was trained on (its dict.txt and feature layout);
``generate_args`` are fairseq-generate arguments (``--beam 5``, ``--generator …``).
``caption_images`` / ``caption_videos`` run the extractor recorded in the data folder's
extractor record (``nar-caption-extract`` writes ``extractor.json`` beside the features it made,
or ``extractor.<settings>.json`` when the folder held files it did not make): the same backbone
and settings as the training features.  The record is the one naming the model's
``--feature-files`` (``extraction.find_record``).  All captions go through the one decode loop
(``inference.py``) and do not depend on how the inputs are batched or ordered.

- ``captioning`` models (AR baseline, NACF, SAIC; any ``--generator``): features as above;
- RDT (``--retrieval-file``): the condition of a new item is its top sentence by the ranker
  ``nar-caption-retrieve`` saved beside the retrieval file (``retrieval.ranker.npz``);
  cascaded RDT is not supported here;
- ``vision_language`` (NARVL, ``--vl-task caption``): no extractor, the model reads pixels;
  each file goes through the task's own image loader and caption prompt.
Checkpoints load with torch's weights_only protection on (``checkpoint.py``).
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import inference
from .data import extraction
from .data.caption_dataset import collate_features
from .data.feature_store import DEFAULT_MAX_ABS, check_feature_dtype, check_feature_values, open_feature_store
from .data.frame_sampling import segment_frame_indices
from .errors import DataError
from .models.modules.extractors import extractor_from_record


class CaptionHub:
    def __init__(self, loaded: "inference.Loaded", data: Optional[str] = None, clip_weights: Optional[str] = None):
        self.loaded = loaded
        self.data = data if data is not None else loaded.cfg.task.data
        self.clip_weights = clip_weights
        self._extractor = None
        task = loaded.task
        self.pixels = not hasattr(task, "feature_dim")  # vision_language (NARVL): pixels + a prompt
        self.ranker = None
        if self.pixels:
            if getattr(task.cfg, "vl_task", None) != "caption":
                raise NotImplementedError(f"{type(task).__name__} --vl-task {getattr(task.cfg, 'vl_task', None)}: "
                                          f"the hub captions images (--vl-task caption)")
            return
        conditions = getattr(task, "conditions", None)
        if conditions is not None and conditions.cascade is not None:
            raise NotImplementedError(f"{self.data}: a cascaded RDT (--cascade-manifests) needs first-stage "
                                      f"captions: decode it with fairseq-generate")
        if conditions is not None and conditions.retrieval is not None:  # RDT: the top retrieved sentence
            from .data.ranking import Ranker, ranker_path

            # the ranker of this retrieval file, made on this data (data/retrieval.py's fingerprint)
            self.retrieval_path = conditions.retrieval_path
            self.ranker = Ranker.load(ranker_path(self.retrieval_path), data=task.cfg.data,
                                      retrieval=conditions.retrieval)
            mine = [os.path.basename(f) for f in task.cfg.feature_files.split(",")]
            theirs = [os.path.basename(f) for f in self.ranker.settings["feature_files"].split(",")]
            if mine != theirs or task.cfg.frames_per_video > 0:
                raise NotImplementedError(
                    f"{self.retrieval_path}: retrieval for new items needs the ranker fit on the model's own "
                    f"feature files without frame sampling ({theirs} vs {mine})")

    @classmethod
    def from_pretrained(cls, checkpoint: str, data: str, generate_args: Sequence[str] = ("--beam", "5"),
                        device: str = "cpu", clip_weights: Optional[str] = None):
        """Unless ``generate_args`` name the feature files: the data folder's only extractor record
        supplies its stores as ``--feature-files`` when they are not the default ``features.h5``
        (a video folder's ``appearance.h5,motion.h5``, tagged stores written beside a file the
        extractor did not make); several records, none of them of ``features.h5``, are one
        DataError listing them."""
        args = ["--path", checkpoint, *generate_args] + (["--cpu"] if device == "cpu" else [])
        named = any(a == "--feature-files" or str(a).startswith("--feature-files=") for a in args)
        records = [] if named else extraction.list_records(data)
        default = list(extraction.IMAGE_STORES)
        if records and not any(r["stores"] == default for _, r in records):
            _, rec = extraction.find_record(data)  # the only one, or a DataError listing them
            args += ["--feature-files", ",".join(rec["stores"])]
        return cls(inference.load(data, args, device=device), data, clip_weights)

    # ------------------------------------------------------------------ features
    def caption(self, features: List[np.ndarray], batch_size: int = 64) -> List[str]:
        """One caption per (N x D) feature array (as stored in the feature files; several
        modalities concatenated along N in the order of ``--feature-files``).  The caption of an
        array does not depend on the other arrays, their order or ``batch_size``."""
        if self.pixels:
            raise NotImplementedError("a vision_language (NARVL) model reads pixels: use caption_images")
        dim = self.loaded.task.feature_dim
        arrays = []
        for k, f in enumerate(features):
            check_feature_dtype(np.asarray(f).dtype, f"features[{k}]")
            a = torch.as_tensor(np.asarray(f, dtype=np.float32))
            if a.dim() != 2 or a.size(1) != dim:
                raise ValueError(f"features[{k}]: shape {tuple(a.shape)}, the model expects (N, {dim})")
            if a.size(0) == 0:
                raise ValueError(f"features[{k}]: no feature vectors (shape {tuple(a.shape)})")
            check_feature_values(a.numpy(), f"features[{k}]",
                                 getattr(self.loaded.task.cfg, "feature_max_abs", DEFAULT_MAX_ABS) or None)
            arrays.append(a)
        out: List[str] = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start:start + batch_size]
            feats, mask = collate_features(chunk)
            # sample id 0 for every item: a generator that draws noise per item (diffusion: seed + id)
            # then gives an input the same caption wherever it sits in the list (fairseq-generate
            # uses the dataset index instead)
            sample = {"id": torch.zeros(len(chunk), dtype=torch.long), "nsentences": len(chunk),
                      "net_input": {"features": feats, "padding_mask": mask}}
            if self.ranker is not None:
                sample["net_input"]["retrieved_tokens"] = self._retrieved_tokens(chunk, start)
            out.extend(inference.decode_batch(self.loaded, inference.to_device(sample, self.loaded.device)))
        return out

    def _retrieved_tokens(self, arrays: List[torch.Tensor], start: int) -> torch.Tensor:
        """RDT's condition for new items: the sentence of rank ``--retrieval-test-rank`` by the
        ranker the retrieval file was made with (as the evaluation splits get it)."""
        from fairseq.data import data_utils

        from .data.caption_dataset import encode_caption

        task = self.loaded.task
        rank = task.cfg.retrieval_test_rank
        pooled = torch.from_numpy(np.stack([self.ranker.pool_array(a.numpy()) for a in arrays]))
        found = self.ranker.rank(pooled, rank + 1)
        d = task.target_dictionary
        toks = [encode_caption(d, f[rank], self.retrieval_path, f"features[{start + k}]", task.cfg.max_target_positions,
                               strict=False) for k, f in enumerate(found)]
        return data_utils.collate_tokens(toks, d.pad())

    def _model_inputs(self, per_store: Sequence[np.ndarray], names: Sequence[str], where: str) -> np.ndarray:
        """The stores the task reads (``--feature-files``, in its order), frame-sampled when the
        task samples frames (``--frames-per-video``), concatenated along time."""
        cfg = self.loaded.task.cfg
        by_name = dict(zip(names, per_store))
        picked = []
        for f in cfg.feature_files.split(","):
            name = os.path.basename(f)
            if name not in by_name:
                raise DataError(f"{where}: the model reads {name}, the extractor writes {', '.join(names)}")
            a = by_name[name]
            if cfg.frames_per_video > 0:
                a = a[segment_frame_indices(len(a), cfg.frames_per_video)]
            picked.append(a)
        return picked[0] if len(picked) == 1 else np.concatenate(picked, axis=0)

    def media(self) -> str:
        """What the model captions: "image" or "video" (its data folder's extractor record)."""
        return "image" if self.pixels else self.record()["settings"]["media"]

    def _feature_names(self) -> List[str]:
        return [os.path.basename(f) for f in self.loaded.task.cfg.feature_files.split(",")]

    def _find_record(self):
        """(path, record) of the data folder's extractor record naming the model's feature files, or None."""
        return extraction.find_record(self.data, self._feature_names())

    def _record(self):
        """(path, record) of ``_find_record``, or one DataError saying what the folder holds instead."""
        found = self._find_record()
        if found is None:
            others = extraction.list_records(self.data)
            if others:
                raise DataError(f"{self.data}: no extractor record names the model's feature files "
                                f"({', '.join(self._feature_names())}); the records there: "
                                f"{extraction.describe_records(others)}; pass the model's --feature-files after --")
            path = os.path.join(self.data, extraction.RECORD_FILE)
            what = "not a record written by nar-caption-extract" if os.path.exists(path) else "not found"
            raise DataError(f"{path}: {what}: the features of this data folder were not made by "
                            f"nar-caption-extract, so the extractor the model needs is unknown; caption a feature "
                            f"file made like them (--features)")
        return found

    def record(self) -> dict:
        """The extractor record of the model's data folder naming its feature files (refused when
        there is none)."""
        return self._record()[1]

    def extractor(self):
        if self._extractor is None:
            where, rec = self._record()
            self._extractor = extractor_from_record(rec, where, str(self.loaded.device), self.clip_weights)
        return self._extractor

    def extract(self, paths: Sequence[str], media: str, batch_size: int = 16) -> List[np.ndarray]:
        """Model inputs of image / video files, made by the data folder's extractor."""
        where, rec = self._record()
        if rec["settings"]["media"] != media:
            raise DataError(f"{where}: the model was trained on {rec['settings']['media']} features; "
                            f"caption {rec['settings']['media']}s, not {media}s")
        ex, frames = self.extractor(), int(rec["settings"].get("frames", 8))
        out = []
        for start in range(0, len(paths), batch_size):
            for per_store in extraction.item_features(ex, media, paths[start:start + batch_size], frames):
                out.append(self._model_inputs(per_store, rec["stores"], where))
        return out

    # ------------------------------------------------------------------ media
    def caption_images(self, paths: Sequence[str], batch_size: int = 16) -> List[str]:
        """One caption per image file (any format PIL decodes)."""
        if self.pixels:
            return [c for start in range(0, len(paths), batch_size)
                    for c in self._caption_pixels(list(paths[start:start + batch_size]))]
        return self.caption(self.extract(list(paths), "image", batch_size))

    def _caption_pixels(self, paths: List[str]) -> List[str]:
        """vision_language captioning: each file as the image column of an OFA caption row (its
        bytes, base64), read by the task's own dataset and image loader (resize to
        --patch-image-size, (x − 0.5) / 0.5), prompt " what does the image describe?"."""
        import base64

        from .data.vl_dataset import ImageLoader, VLDataset, VLRow, prompt_for

        task = self.loaded.task
        rows = []
        for k, p in enumerate(paths):
            extraction.load_image(p)  # a file PIL cannot decode: one DataError naming it
            with open(p, "rb") as f:
                b64 = base64.urlsafe_b64encode(f.read()).decode("ascii")
            # the target is a placeholder: decoding never reads it
            rows.append(VLRow(str(k), extraction._item_id(p), b64, prompt_for("caption", ""), "image",
                              references=["image"]))
        ds = VLDataset(rows, "<caption_images>", "caption", ImageLoader(None, task.cfg.patch_image_size),
                       task.dictionary, task.encode, task.box_tokens,
                       max_target_positions=task.cfg.max_target_positions)
        out = inference.decode_dataset(self.loaded, ds, batch_size=len(rows))
        return [out[str(k)] for k in range(len(paths))]

    def caption_videos(self, paths: Sequence[str], batch_size: int = 2) -> List[str]:
        """One caption per video file (any format PyAV / FFmpeg decodes)."""
        if self.pixels:
            raise DataError("a vision_language (NARVL) model captions images, not videos")
        return self.caption(self.extract(list(paths), "video", batch_size))

    def caption_feature_files(self, files: Sequence[str], ids: Optional[Sequence[str]] = None) -> Dict[str, str]:
        """item id → caption for the items of feature stores (one per modality, in the order of
        the model's ``--feature-files``), checked against the data folder's extractor record."""
        if self.pixels:
            raise NotImplementedError("a vision_language (NARVL) model reads pixels: use caption_images")
        found = self._find_record()
        where, expected = found if found is not None else (None, None)
        for f in files:
            found = extraction.read_store_settings(f) if os.path.isfile(f) else None
            if expected is not None and found is None:
                raise DataError(f"{f}: carries no extractor record, the model's data folder was made by "
                                f"{expected['settings']['backbone']} ({where}): cannot check that they match")
            if expected is None and found is not None:
                raise DataError(f"{f}: made by nar-caption-extract ({found['backbone']}), but the model's data "
                                f"folder {self.data} has no extractor record of its feature files "
                                f"({', '.join(self._feature_names())}): its features were made otherwise")
            if expected is not None:
                extraction.check_same_settings(expected["settings"], found, where, f)
        wanted = [os.path.basename(f) for f in self.loaded.task.cfg.feature_files.split(",")]
        if len(files) != len(wanted):
            raise DataError(f"{', '.join(files)}: {len(files)} feature file(s), the model reads {len(wanted)} "
                            f"({', '.join(wanted)}), give them in that order")
        names = wanted  # the i-th file given is the model's i-th feature file
        stores = [open_feature_store(f) for f in files]
        try:
            ids = list(ids) if ids is not None else extraction.store_ids(files[0])
            per_item = [self._model_inputs([s.get(i) for s in stores], names, ", ".join(files)) for i in ids]
        finally:
            for s in stores:
                getattr(s, "close", lambda: None)()
        return dict(zip(ids, self.caption(per_item)))
