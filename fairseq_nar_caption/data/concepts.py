"""The real-language benchmark: COCO captions, with a concept set standing in for the picture.

No images are needed.  Per image, ONE of its human captions is held out and turned into what an
object / attribute detector would report: its content words (nouns, verbs, adjectives by NLTK's
Penn Treebank tags, forms of "be" / "have" / "do" left out), as an unordered set, each word a fixed
vector.  The image's other captions are the training targets (train split) or the references
(val / test): the held-out caption is never among them.  What this is: real caption language,
real ambiguity (4 people describe one scene differently, and the concept set says only part of
it).  What it is not: pixels; a detector's errors are simulated only by the noise options.

- Concept vectors: word → a D-dimensional standard normal vector / √D drawn from a generator
  seeded by the word's BLAKE2 digest alone (the same word gives the same vector in every split,
  every run, every ``--seed``).  An item's features are its concepts' vectors, one row each, in
  sorted word order: the rows carry no word order of the caption (two orderings of one caption
  give identical features).
- Detector noise (deterministic in ``--seed`` and the image id): ``drop`` removes each concept
  with that probability (one is always kept); ``distractors`` adds up to that many concepts that
  co-occur with the kept ones in the TRAINING split's concept sets (weighted by co-occurrence
  count; never one already present), so evaluation items get no knowledge of their own captions.
- Splits: images with at least two captions, in a fixed shuffle of ``seed``, the first
  ``sizes[0]`` train, the next val, then test.  The held-out caption is drawn per image from
  (seed, image id); one whose content words are empty is replaced by the next one that has some;
  an image with none is skipped and counted.

The folder is what the ``captioning`` task reads (``features.h5`` with one (K, D) float32 array per
image id, ``train/val/test.tsv``, ``dict.txt``, ``val_refs.json``, ``test_refs.json``; written by
``video_corpus.write_video_corpus`` as the other preparation scripts do) plus ``concepts.json``
({image id: {"concepts": [...], "held_out": caption}}: what the features encode, for diagnosis) and
``val_held_out.json`` / ``test_held_out.json``: the held-out captions as a COCO results file, so that
``nar-caption-score --results`` gives the human reference point (one person against the other four).
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import DataError, OptionError
from ..files import atomic_path, load_json, write_json
from .text import normalize_caption, pos_tag_captions
from .video_corpus import SPLITS, Video, check_output_folder, corpus_files, write_video_corpus

COMMAND = "nar-caption-concepts"
CONTENT_TAGS = ("NN", "VB", "JJ")
NOT_CONTENT = frozenset("be is are was were been being am has have had having do does did doing".split())


@dataclass
class ConceptConfig:
    sizes: Tuple[int, int, int] = (8000, 500, 1000)  # images in train, val, test
    dim: int = 256
    seed: int = 1
    drop: float = 0.0
    distractors: int = 0
    min_count: int = 5
    max_words: int = 20

    def validate(self) -> None:
        if len(self.sizes) != 3 or min(self.sizes) < 1:
            raise OptionError(f"--images needs three counts >= 1 (train,val,test), got {self.sizes}")
        if self.dim < 1:
            raise OptionError(f"--dim must be >= 1, got {self.dim}")
        if not 0 <= self.drop < 1:
            raise OptionError(f"--drop must be in [0, 1), got {self.drop}")
        if self.distractors < 0:
            raise OptionError(f"--distractors must be >= 0, got {self.distractors}")


@dataclass
class Item:
    item_id: str
    held_out: str
    others: List[str]
    concepts: List[str] = field(default_factory=list)  # the held-out caption's content words, sorted


def read_coco_captions(path: str) -> Tuple[Dict[int, List[str]], int]:
    """{image id: normalised captions in annotation-id order} of a COCO captions JSON
    (``{"images": [{"id"}], "annotations": [{"image_id", "id", "caption"}]}``), and the number of
    captions empty after normalisation (skipped)."""
    doc = load_json(path, "COCO captions")
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise DataError(f"{path}: no 'annotations' list (expected a COCO captions file such as "
                        f"captions_train2014.json)")
    known = None
    if isinstance(doc.get("images"), list):
        known = set()
        for k, im in enumerate(doc["images"]):
            if not isinstance(im, dict) or not _is_int(im.get("id")):
                raise DataError(f"{path}: images[{k}]: no integer 'id'")
            known.add(im["id"])
    rows: Dict[int, List[Tuple[int, str]]] = defaultdict(list)
    empty = 0
    for k, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("image_id")) or not isinstance(ann.get("caption"), str):
            raise DataError(f"{path}: annotations[{k}]: needs an integer 'image_id' and a string 'caption'")
        if known is not None and ann["image_id"] not in known:
            raise DataError(f"{path}: annotations[{k}]: image {ann['image_id']} is not in 'images'")
        caption = normalize_caption(ann["caption"])
        if not caption:
            empty += 1
            continue
        rows[ann["image_id"]].append((ann["id"] if _is_int(ann.get("id")) else k, caption))
    return {i: [c for _, c in sorted(r)] for i, r in rows.items()}, empty


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def concept_words(caption: str, tags: Sequence[str]) -> List[str]:
    """The caption's content words (nouns, verbs, adjectives; not be / have / do), sorted, unique."""
    words = caption.split()
    return sorted({w for w, t in zip(words, tags) if t.startswith(CONTENT_TAGS) and w not in NOT_CONTENT})


def concept_vector(word: str, dim: int) -> np.ndarray:
    """The fixed vector of a concept word (module docstring): seeded by the word alone."""
    seed = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
    return (np.random.default_rng(seed).standard_normal(dim) / np.sqrt(dim)).astype(np.float32)


def concept_features(words: Sequence[str], dim: int) -> np.ndarray:
    """K x D: the vectors of ``words`` in sorted order (no order of the caption survives)."""
    return np.stack([concept_vector(w, dim) for w in sorted(words)])


def _item_rng(seed: int, image_id: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, image_id, purpose])


def select_items(captions: Dict[int, List[str]], cfg: ConceptConfig, log: Callable[[str], None] = print
                 ) -> Tuple[Dict[str, List[Item]], dict]:
    """The three splits (module docstring) with each item's held-out caption and concept words."""
    ids = sorted(i for i, c in captions.items() if len(c) >= 2)
    need = sum(cfg.sizes)
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(ids))
    # tag a margin beyond the requested images: a few have no content words in any caption
    pool = [ids[j] for j in order[: min(len(ids), need + need // 20 + 10)]]
    log(f"tagging the captions of {len(pool)} images (NLTK)")
    flat = [c.split() for i in pool for c in captions[i]]
    tags = iter(pos_tag_captions(flat))
    items, skipped = [], 0
    for i in pool:
        caps = captions[i]
        words = [concept_words(c, next(tags)) for c in caps]
        first = int(_item_rng(cfg.seed, i, 1).integers(len(caps)))
        pick = next((k % len(caps) for k in range(first, first + len(caps)) if words[k % len(caps)]), None)
        if pick is None:
            skipped += 1
            continue
        items.append(Item(str(i), caps[pick], caps[:pick] + caps[pick + 1:], words[pick]))
        if len(items) == need:
            break
    if len(items) < need:
        raise DataError(f"{need} images requested (--images {','.join(map(str, cfg.sizes))}) but the captions "
                        f"file has only {len(items)} usable ones (at least two captions, content words in one)")
    a, b = cfg.sizes[0], cfg.sizes[0] + cfg.sizes[1]
    splits = {"train": items[:a], "val": items[a:b], "test": items[b:]}
    return splits, {"images_with_fewer_than_two_captions": len(captions) - len(ids),
                    "images_without_content_words_skipped": skipped}


def cooccurrence(items: Sequence[Item]) -> Dict[str, Counter]:
    """word → Counter of the words that share a concept set with it (training items)."""
    co: Dict[str, Counter] = defaultdict(Counter)
    for it in items:
        for w in it.concepts:
            co[w].update(v for v in it.concepts if v != w)
    return co


def detect(item: Item, co: Dict[str, Counter], cfg: ConceptConfig) -> List[str]:
    """The simulated detector's output for an item: its concepts after ``drop`` and ``distractors``."""
    rng = _item_rng(cfg.seed, int(item.item_id), 2)
    kept = [w for w in item.concepts if rng.random() >= cfg.drop] if cfg.drop > 0 else list(item.concepts)
    if not kept:
        kept = [item.concepts[int(rng.integers(len(item.concepts)))]]
    if cfg.distractors:
        weights: Counter = Counter()
        for w in kept:
            weights.update(co.get(w, {}))
        for w in item.concepts:
            weights.pop(w, None)
        if weights:
            words = sorted(weights)
            p = np.array([weights[w] for w in words], dtype=np.float64)
            n = min(cfg.distractors, len(words))
            kept += [words[j] for j in rng.choice(len(words), size=n, replace=False, p=p / p.sum())]
    return sorted(set(kept))


def build(captions_path: str, out: str, cfg: ConceptConfig, overwrite: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Write the benchmark folder (module docstring); returns the counts ``format_summary`` prints.
    Every output is checked before any work and written atomically."""
    cfg.validate()
    names = corpus_files(out) + [os.path.join(out, n) for n in ("features.h5", "concepts.json", "val_held_out.json",
                                                                "test_held_out.json")]
    check_output_folder(out, names, COMMAND, [captions_path], overwrite)
    captions, empty = read_coco_captions(captions_path)
    splits, counts = select_items(captions, cfg, log)
    co = cooccurrence(splits["train"])
    detected = {it.item_id: detect(it, co, cfg) for s in SPLITS for it in splits[s]}
    os.makedirs(out, exist_ok=True)
    log(f"writing {sum(len(v) for v in splits.values())} concept sets to {os.path.join(out, 'features.h5')}")
    import h5py

    with atomic_path(os.path.join(out, "features.h5"), made_by=COMMAND) as tmp:
        with h5py.File(tmp, "w") as f:
            for item_id, words in detected.items():
                f.create_dataset(item_id, data=concept_features(words, cfg.dim))
    for split in ("val", "test"):  # the human reference point: each held-out caption scored as a result
        write_json(os.path.join(out, f"{split}_held_out.json"),
                   [{"image_id": it.item_id, "caption": it.held_out} for it in splits[split]], made_by=COMMAND)
    write_json(os.path.join(out, "concepts.json"),
               {it.item_id: {"concepts": detected[it.item_id], "held_out": it.held_out}
                for s in SPLITS for it in splits[s]}, made_by=COMMAND)
    videos = {s: [Video(it.item_id, it.others) for it in splits[s]] for s in SPLITS}
    summary = write_video_corpus(out, videos, captions_path, cfg.min_count, cfg.max_words,
                                 name="COCO concepts", command=COMMAND, overwrite=overwrite,
                                 inputs=[captions_path])
    n_concepts = [len(w) for w in detected.values()]
    summary.update(counts, empty_captions_skipped=empty, dim=cfg.dim,
                   concepts_per_image=(min(n_concepts), float(np.mean(n_concepts)), max(n_concepts)))
    return summary


def format_summary(out: str, s: dict) -> str:
    lines = [f"COCO concepts -> {out}"]
    lines += [f"  {split}: {s['videos'][split]} images, {s['captions'][split]} captions" for split in SPLITS]
    lo, mean, hi = s["concepts_per_image"]
    lines.append(f"  features.h5: one (K, {s['dim']}) concept set per image, K {lo}..{hi} (mean {mean:.1f})")
    lines.append(f"  dict.txt: {s['vocab']} words (seen >= {s['min_count']} times in the training captions)")
    lines.append(f"  training captions over {s['max_words']} words dropped: {s['train_long_dropped']}")
    lines.append(f"  training captions with <unk>: {s['train_unk_captions']} ({s['train_unk_tokens']} <unk> tokens)")
    lines.append(f"  skipped: {s['images_with_fewer_than_two_captions']} images with fewer than two captions, "
                 f"{s['images_without_content_words_skipped']} without content words, "
                 f"{s['empty_captions_skipped']} captions empty after normalisation")
    return "\n".join(lines)
