"""Vision-language examples in OFA's TSV formats (OFA's README), for ``tasks/vision_language.py``.

Columns (tab-separated; read by ``data/ofa_tsv.py``, the one reader of these files, which
also accepts a header line naming the columns):

| task | columns |
| --- | --- |
| caption | uniq-id, image-id, caption (eval splits: references joined by ``&&``), objects (unused), image |
| vqa | question-id, image-id, question, answers ``conf|!+ans&&…``, objects (unused), image |
| grounding | uniq-id, image-id, text, box ``x0,y0,x1,y1`` (pixels of the stored image), image |
| entailment | uniq-id, image-id, image, hypothesis, premise (may be empty), label |

``image`` is OFA's urlsafe base64 image, or, when the task has ``--image-dir``, an id
resolved as ``<image-dir>/<id>.png`` (or .jpg) — the toy benchmark's layout.

Rows stay in file order: sample id i = i-th data row (what ``cli/score_vl.py`` expects).
Every bad row stops at load time with one message naming the file and the line; VQA
answers are parsed by the scorer's own reader, ``ofa_tsv.parse_ofa_answers``.
Images are checked at load time too (``image_check``, the task's ``--image-check``):
``full`` decodes every image once; ``lazy`` only checks that each file exists (or that
each base64 string carries an image header) and decodes when a row is read.
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
from ..errors import DataError
from .ofa_tsv import (ENTAILMENT_LABELS, OFA_COLUMNS, image_size, iter_ofa_tsv, parse_box_field, parse_ofa_answers,
                      split_captions)
from .images import to_rgb

IMAGE_CHECKS = ("full", "lazy")


def prompt_for(task: str, text: str, premise: str = "") -> str:
    """OFA's prompts (its README and task code); VQA's prompt is the question itself."""
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
            img.load()
            return to_rgb(img, where)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from None

    def check(self, image: str, where: str, full: bool = True):
        """(width, height) of the image, with one DataError naming ``where`` when it cannot be used.
        ``full``: decode it entirely (a truncated or corrupt image fails here, at load time);
        otherwise read only the file's presence / the image header."""
        if full:
            with self.open(image, where) as img:
                return img.size
        if self.image_dir:
            p = self.path(image)
            if p is None:
                raise DataError(f"{where}: image {image!r} not found in {self.image_dir} (.png/.jpg)")
            try:
                with Image.open(p) as im:
                    return im.size
            except Exception as e:
                raise DataError(f"{where}: cannot read the image {p} ({type(e).__name__}: {e})") from None
        try:
            return image_size(image)
        except ValueError as e:
            raise DataError(f"{where}: image column: {e}") from None

    def tensor(self, img: Image.Image) -> torch.Tensor:
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - 0.5) / 0.5


def read_vl_tsv(path: str, task: str, training: bool) -> List[VLRow]:
    """The rows of a VL split (``ofa_tsv.iter_ofa_tsv``) as examples of ``task``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found")
    rows = []
    for row in iter_ofa_tsv(path, task):
        where = f"{path}:{row['line']} (id {row.get('uniq_id', row.get('image_id'))})"
        uniq = row.get("uniq_id") or f"{row['image_id']}_{row['row']}"
        image = row.get("image") or row["image_id"]  # no image column: the id names a file in --image-dir
        if task == "caption":
            refs = split_captions(row["caption"])
            if not refs:
                raise DataError(f"{where}: empty caption")
            vl = VLRow(uniq, row["image_id"], image, prompt_for(task, ""), refs[0], references=refs)
        elif task == "vqa":
            field = row.get("answers", "")
            if not field.strip() and not training:  # e.g. VQAv2 test-dev: no answers to score against
                ans, best = {}, ""
            else:
                try:
                    ans = parse_ofa_answers(field)
                except ValueError as e:
                    raise DataError(f"{where}: {e}") from None
                best = max(ans.items(), key=lambda kv: kv[1])[0]  # training target: the most confident answer
            vl = VLRow(uniq, row["image_id"], image, prompt_for(task, row["question"]), best, answers=ans)
        elif task == "grounding":
            try:
                box = parse_box_field(row["box"])
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
            if not (box[0] < box[2] and box[1] < box[3]):
                raise DataError(f"{where}: box {row['box']!r} is not 'x0,y0,x1,y1' with x0<x1, y0<y1")
            vl = VLRow(uniq, row["image_id"], image, prompt_for(task, row["text"]), "", box=box)
        else:
            label = row["label"].strip()
            if label not in ENTAILMENT_LABELS:
                raise DataError(f"{where}: label {label!r} is not one of {list(ENTAILMENT_LABELS)}")
            vl = VLRow(uniq, row["image_id"], image, prompt_for(task, row["hypothesis"], row.get("premise", "")),
                       label, label=label)
        # the OFA layout in full (distillation rewrites fields by position), absent columns empty
        vl.columns = [row.get(c, image if c == "image" else "") for c in OFA_COLUMNS[task]]
        rows.append(vl)
    return rows


class VLDataset(SourceTargetSizes, FairseqDataset):
    """One example per TSV row, in file order.  ``encode(text) -> LongTensor`` (BPE +
    dictionary, no </s>) comes from the task; boxes are quantised by the task's
    ``box_tokens(box, width, height)``."""

    def __init__(self, rows: List[VLRow], path: str, task_name: str, images: ImageLoader, dictionary,
                 encode, box_tokens=None, max_target_positions: int = 32, max_text_positions: int = 128,
                 shuffle: bool = False, min_positions=None, image_check: str = "full"):
        if image_check not in IMAGE_CHECKS:
            raise DataError(f"{path}: unknown image check {image_check!r} (full|lazy)")
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
            size = images.check(r.image, where, full=(image_check == "full"))
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
        item = {"id": index, "item_id": r.uniq_id, "source": self.sources[index], "target": self.targets[index],
                "image": self.images.tensor(img)}
        if r.references is not None:  # caption rows: every reference, for --eval-cider
            item["references"] = r.references
        return item

    def collater(self, samples):
        if not samples:
            return {}
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        targets = [s["target"] for s in samples]
        batch = {
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
        if all("references" in s for s in samples):
            batch["references"] = [s["references"] for s in samples]
        return batch

    def ordered_indices(self):
        if self.shuffle:
            return np.random.permutation(len(self))
        return np.arange(len(self))  # eval: file order (sample id = row index)

    @property
    def supports_prefetch(self):
        return False
