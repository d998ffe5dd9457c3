"""Vision-language examples in OFA's TSV formats (ANCHORS.md §3), for ``tasks/vision_language.py``.

Columns (tab-separated, no header; a first line starting with ``uniq_id`` or
``uniq-id`` is taken as a header and skipped):

| task | columns |
| --- | --- |
| caption | uniq-id, image-id, caption (eval splits: references joined by ``&&``), objects (unused), image |
| vqa | question-id, image-id, question, answers ``conf|!+ans&&…``, objects (unused), image |
| grounding | uniq-id, image-id, text, box ``x0,y0,x1,y1`` (pixels of the stored image), image |
| entailment | uniq-id, image-id, image, hypothesis, premise (may be empty), label |

``image`` is OFA's urlsafe base64 image, or, when the task has ``--image-dir``, an id
resolved as ``<image-dir>/<id>.png`` (or .jpg) — the toy benchmark's layout.

Rows stay in file order: sample id i = i-th data row (what ``cli/score_vl.py`` expects).
Every bad row stops at load time with one message naming the file and the line.
"""
import base64
import copy
import io
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from PIL import Image

from .caption_dataset import SourceTargetSizes
from .manifest import DataError

COLUMNS = {"caption": 5, "vqa": 6, "grounding": 5, "entailment": 6}
# The target is the label word itself (OFA answers yes/no/maybe): cli/score_vl.py compares the
# decoded text with the TSV's label column.
ENTAILMENT_LABELS = ("entailment", "contradiction", "neutral")


def prompt_for(task: str, text: str, premise: str = "") -> str:
    """OFA's prompts (ANCHORS.md §3); VQA's prompt is the question itself."""
    text = text.strip()
    if task == "caption":
        return " what does the image describe?"
    if task == "vqa":
        return " " + text
    if task == "grounding":
        return f' which region does the text " {text} " describe?'
    if premise:
        return f' can image and text1 " {premise.strip()} " imply text2 " {text} "?'
    return f' does the image describe " {text} "?'


def parse_answers(field: str, where: str) -> Dict[str, float]:
    """VQA ``conf|!+answer&&conf|!+answer`` → {answer: confidence}."""
    out = {}
    for part in field.split("&&"):
        if "|!+" not in part:
            raise DataError(f"{where}: answer {part!r} is not 'confidence|!+answer'")
        conf, ans = part.split("|!+", 1)
        try:
            c = float(conf)
        except ValueError:
            raise DataError(f"{where}: confidence {conf!r} is not a number") from None
        if not ans.strip():
            raise DataError(f"{where}: empty answer")
        out[ans.strip()] = max(c, out.get(ans.strip(), 0.0))
    return out


@dataclass
class VLRow:
    uniq_id: str
    image_id: str
    image: str  # base64 or id
    prompt: str
    target: str  # training target text (box: "<bin_a> <bin_b> <bin_c> <bin_d>")
    references: Optional[List[str]] = None  # caption
    answers: Optional[Dict[str, float]] = None  # vqa
    box: Optional[List[float]] = None  # grounding, pixels
    label: Optional[str] = None  # entailment label (the target word)
    columns: Optional[List[str]] = None  # the raw TSV fields (distillation rewrites them)


class ImageLoader:
    """Image column → normalised 3 x S x S tensor (OFA: resize to the patch size,
    (x − 0.5)/0.5).  Also the original (width, height), for boxes."""

    def __init__(self, image_dir: Optional[str], size: int):
        self.image_dir, self.size = image_dir, size

    def path(self, image: str) -> Optional[str]:
        for ext in (".png", ".jpg", ".jpeg"):
            p = os.path.join(self.image_dir, image + ext)
            if os.path.isfile(p):
                return p
        return None

    def open(self, image: str, where: str) -> Image.Image:
        try:
            if self.image_dir:
                p = self.path(image)
                if p is None:
                    raise DataError(f"{where}: image {image!r} not found in {self.image_dir} (.png/.jpg)")
                img = Image.open(p)
            else:
                img = Image.open(io.BytesIO(base64.urlsafe_b64decode(image + "=" * (-len(image) % 4))))
            return img.convert("RGB")
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from None

    def tensor(self, img: Image.Image) -> torch.Tensor:
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - 0.5) / 0.5


def read_vl_tsv(path: str, task: str, training: bool) -> List[VLRow]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found")
    n_cols = COLUMNS[task]
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if lineno == 1 and (line.startswith("uniq_id") or line.startswith("uniq-id")):
                continue
            if not line.strip():
                raise DataError(f"{path}:{lineno}: empty line")
            c = line.split("\t")
            where = f"{path}:{lineno} (id {c[0]})"
            if len(c) != n_cols:
                raise DataError(f"{where}: {len(c)} columns, a {task} TSV has {n_cols}")
            if task == "caption":
                refs = [r.strip() for r in c[2].split("&&") if r.strip()]
                if not refs:
                    raise DataError(f"{where}: empty caption")
                rows.append(VLRow(c[0], c[1], c[4], prompt_for(task, ""), refs[0], references=refs))
            elif task == "vqa":
                if not c[2].strip():
                    raise DataError(f"{where}: empty question")
                if not c[3].strip() and not training:  # e.g. VQAv2 test-dev: no answers to score against
                    ans, best = {}, ""
                else:
                    ans = parse_answers(c[3], where)
                    best = max(ans.items(), key=lambda kv: kv[1])[0]  # training target: the most confident answer
                rows.append(VLRow(c[0], c[1], c[5], prompt_for(task, c[2]), best, answers=ans))
            elif task == "grounding":
                try:
                    box = [float(v) for v in c[3].split(",")]
                except ValueError:
                    box = []
                if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
                    raise DataError(f"{where}: box {c[3]!r} is not 'x0,y0,x1,y1' with x0<x1, y0<y1")
                if not c[2].strip():
                    raise DataError(f"{where}: empty referring expression")
                rows.append(VLRow(c[0], c[1], c[4], prompt_for(task, c[2]), "", box=box))
            else:
                label = c[5].strip()
                if label not in ENTAILMENT_LABELS:
                    raise DataError(f"{where}: label {label!r} is not one of {list(ENTAILMENT_LABELS)}")
                rows.append(VLRow(c[0], c[1], c[2], prompt_for(task, c[3], c[4]), label, label=label))
            rows[-1].columns = c
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


class VLDataset(SourceTargetSizes, FairseqDataset):
    """One example per TSV row, in file order.  ``encode(text) -> LongTensor`` (BPE +
    dictionary, no </s>) comes from the task; boxes are quantised by the task's
    ``box_tokens(box, width, height)``."""

    def __init__(self, rows: List[VLRow], path: str, task_name: str, images: ImageLoader, dictionary,
                 encode, box_tokens=None, max_target_positions: int = 32, max_text_positions: int = 128,
                 shuffle: bool = False, min_positions=None, check_images: bool = True):
        self.rows, self.path, self.task_name, self.images = rows, path, task_name, images
        self.dictionary, self.shuffle = dictionary, shuffle
        bos, eos = dictionary.bos(), dictionary.eos()
        self.sources, self.targets, self.image_sizes = [], [], []
        for i, r in enumerate(rows):
            where = f"{path}: row {i + 1} (id {r.uniq_id})"
            src = encode(r.prompt)
            if len(src) + 2 > max_text_positions:
                raise DataError(f"{where}: prompt of {len(src) + 2} tokens exceeds {max_text_positions} text positions")
            self.sources.append(torch.cat([torch.LongTensor([bos]), src, torch.LongTensor([eos])]))
            if task_name == "grounding" or check_images:
                if images.image_dir:
                    p = images.path(r.image)
                    if p is None:
                        raise DataError(f"{where}: image {r.image!r} not found in {images.image_dir} (.png/.jpg)")
                    with Image.open(p) as im:
                        size = im.size
                else:
                    size = self.images.open(r.image, where).size if task_name == "grounding" else None
            else:
                size = None
            self.image_sizes.append(size)
            if task_name == "grounding":
                w, h = size
                x0, y0, x1, y1 = r.box
                if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                    raise DataError(f"{where}: box {r.box} outside the {w}x{h} image")
                tgt = box_tokens(r.box, w, h)
            else:
                tgt = encode(r.target)
            if len(tgt) == 0 and r.answers != {}:
                raise DataError(f"{where}: empty target {r.target!r}")
            if len(tgt) + 1 > max_target_positions:
                raise DataError(f"{where}: target of {len(tgt) + 1} tokens exceeds --max-target-positions "
                                f"{max_target_positions}")
            self.targets.append(torch.cat([tgt, torch.LongTensor([eos])]))
        self.src_sizes = np.array([len(s) for s in self.sources], dtype=np.int64)
        self.tgt_sizes = np.array([len(t) for t in self.targets], dtype=np.int64)

    def select(self, indices: List[int]) -> "VLDataset":
        """The rows ``indices`` (in that order) as a dataset sharing this one's settings."""
        sub = copy.copy(self)
        for name in ("rows", "sources", "targets", "image_sizes"):
            setattr(sub, name, [getattr(self, name)[i] for i in indices])
        sub.src_sizes, sub.tgt_sizes = self.src_sizes[indices], self.tgt_sizes[indices]
        return sub

    def where(self, index: int) -> str:
        return f"{self.path}: row {index + 1} (id {self.rows[index].uniq_id})"

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        r = self.rows[index]
        img = self.images.open(r.image, self.where(index))
        return {"id": index, "item_id": r.uniq_id, "source": self.sources[index], "target": self.targets[index],
                "image": self.images.tensor(img)}

    def collater(self, samples):
        if not samples:
            return {}
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        targets = [s["target"] for s in samples]
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "item_ids": [s["item_id"] for s in samples],
            "nsentences": len(samples),
            "ntokens": int(sum(len(t) for t in targets)),
            "net_input": {
                "src_tokens": data_utils.collate_tokens([s["source"] for s in samples], pad, eos, left_pad=False),
                "src_lengths": torch.LongTensor([len(s["source"]) for s in samples]),
                "patch_images": torch.stack([s["image"] for s in samples]),
                "prev_output_tokens": data_utils.collate_tokens(targets, pad, eos, left_pad=False,
                                                                move_eos_to_beginning=True),
            },
            "target": data_utils.collate_tokens(targets, pad, eos, left_pad=False),
        }

    def ordered_indices(self):
        if self.shuffle:
            return np.random.permutation(len(self))
        return np.arange(len(self))  # eval: file order (sample id = row index)

    @property
    def supports_prefetch(self):
        return False
