"""Writing a prepared video-caption corpus (shared by the MSR-VTT and MSVD scripts).

``write_video_corpus`` turns parsed videos and captions into what the
``captioning`` task reads: <split>.tsv manifests (NLTK POS tags, optional
category), dict.txt from the kept training captions, <split>_refs.json.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .feature_store import format_key, open_feature_store
from .manifest import CaptionRow, write_coco_refs, write_manifest
from ..errors import DataError, OutputError
from ..files import check_output, check_writable_folder
from .text import build_dictionary, pos_tag_captions

SPLITS = ("train", "val", "test")
UNK = "<unk>"  # fairseq's Dictionary.unk_word


@dataclass
class Video:
    item_id: str
    captions: List[str]  # normalised, non-empty, annotation order
    category: Optional[int] = None


def check_features(paths: Sequence[str], item_ids: Sequence[str], template: str = "{}", what: str = "video") -> None:
    """Every feature file holds a 2-D array under ``template`` applied to every id;
    one error per file lists the missing ids (and their keys when a template applies)."""
    for path in paths:
        store = open_feature_store(path, template)
        missing = []
        for item_id in item_ids:
            try:
                store.shape(item_id)
            except DataError:
                missing.append(item_id)
        if missing:
            shown = ", ".join(i if template == "{}" else f"{i} (key {format_key(template, i)!r})"
                              for i in missing[:10])
            raise DataError(f"{path}: {len(missing)} of {len(item_ids)} {what}(s) have no 2-D features: "
                            f"{shown}{', ...' if len(missing) > 10 else ''}")


def _eval_order(captions: List[str], max_words: int) -> List[str]:
    """Captions with the first one of at most ``max_words`` words moved to the front."""
    for k, c in enumerate(captions):
        if len(c.split()) <= max_words:
            return [c] + captions[:k] + captions[k + 1:]
    return captions


def corpus_files(out: str) -> List[str]:
    """The files ``write_video_corpus`` writes into ``out``."""
    return [os.path.join(out, n) for n in ["dict.txt"] + [f"{s}.tsv" for s in SPLITS]
            + [f"{s}_refs.json" for s in ("val", "test")]]


def check_output_folder(out: str, paths: Sequence[str], command: str, inputs: Sequence[str] = (),
                        overwrite: bool = False) -> None:
    """Before any work: ``out`` is a folder whose ``paths`` may be written (``files.check_output``), or
    does not exist yet and its parent takes a file.  Nothing is created."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"{out}: not a folder")
    if os.path.isdir(out):
        for path in paths:
            check_output(path, command, inputs=inputs, overwrite=overwrite)
    else:
        check_writable_folder(os.path.dirname(os.path.abspath(out)), out)


def write_video_corpus(out: str, splits: Dict[str, List[Video]], source: str, min_count: int,
                       max_words: int, feature_files: Sequence[str] = (), name: str = "",
                       command: str = "", overwrite: bool = False, inputs: Sequence[str] = ()) -> dict:
    """Write manifests, ``dict.txt`` and references of a video corpus into ``out``.

    ``splits`` maps train/val/test to videos with normalised captions; ``source``
    names the annotation file(s) in errors.  Over-long training captions are
    dropped, training words below ``min_count`` become ``<unk>`` (see the module
    docstring).  Before any work, each output is checked (``files.check_output``): none of
    ``inputs`` or ``feature_files``, and an existing file is replaced only when ``command`` (the
    preparation script) made it or ``overwrite``.  Returns the counts that ``format_summary`` prints.
    """
    for split in SPLITS:
        if not splits.get(split):
            raise DataError(f"{source}: no {split} videos")
    check_features(feature_files, [v.item_id for split in SPLITS for v in splits[split]])
    check_output_folder(out, corpus_files(out), command or name, list(inputs) + list(feature_files), overwrite)
    os.makedirs(out, exist_ok=True)

    # (video, caption) pairs per split: training drops over-long captions
    pairs: Dict[str, List[tuple]] = {}
    pairs["train"] = [(v, c) for v in splits["train"] for c in v.captions if len(c.split()) <= max_words]
    for split in ("val", "test"):
        pairs[split] = [(v, c) for v in splits[split] for c in _eval_order(v.captions, max_words)]
    tags = iter(pos_tag_captions([c.split() for split in SPLITS for _, c in pairs[split]]))
    tagged = {split: [(v, c, " ".join(next(tags))) for v, c in pairs[split]] for split in SPLITS}

    made_by = command or name
    vocab = {w for w, _ in build_dictionary((c for _, c in pairs["train"]), os.path.join(out, "dict.txt"),
                                            min_count=min_count, made_by=made_by)}
    unk_captions = unk_tokens = 0
    rows: Dict[str, List[CaptionRow]] = {split: [] for split in SPLITS}
    for v, c, pos in tagged["train"]:
        words = [w if w in vocab else UNK for w in c.split()]
        n_unk = words.count(UNK)
        unk_captions += int(n_unk > 0)
        unk_tokens += n_unk
        rows["train"].append(CaptionRow(v.item_id, " ".join(words), pos, v.category))
    for split in ("val", "test"):
        rows[split] = [CaptionRow(v.item_id, c, pos, v.category) for v, c, pos in tagged[split]]
    for split in SPLITS:
        write_manifest(os.path.join(out, f"{split}.tsv"), rows[split], made_by=made_by)
    for split in ("val", "test"):
        write_coco_refs(os.path.join(out, f"{split}_refs.json"), rows[split],
                        info={"description": f"{name} {split} references (normalised captions)".strip()},
                        made_by=made_by)

    train_ids = {r.item_id for r in rows["train"]}
    return {
        "videos": {split: len({r.item_id for r in rows[split]}) for split in SPLITS},
        "captions": {split: len(rows[split]) for split in SPLITS},
        "vocab": len(vocab),
        "min_count": min_count,
        "max_words": max_words,
        "train_long_dropped": sum(len(v.captions) for v in splits["train"]) - len(pairs["train"]),
        "train_videos_without_caption": [v.item_id for v in splits["train"] if v.item_id not in train_ids],
        "train_unk_captions": unk_captions,
        "train_unk_tokens": unk_tokens,
        "eval_items_all_long": [v.item_id for split in ("val", "test") for v in splits[split]
                                if all(len(c.split()) > max_words for c in v.captions)],
    }


def format_summary(name: str, out: str, summary: dict) -> str:
    s = summary
    lines = [f"{name} -> {out}"]
    for split in SPLITS:
        lines.append(f"  {split}: {s['videos'][split]} videos, {s['captions'][split]} captions")
    lines.append(f"  dict.txt: {s['vocab']} words (seen >= {s['min_count']} times in the training captions)")
    lines.append(f"  training captions over {s['max_words']} words dropped: {s['train_long_dropped']}")
    if s["train_videos_without_caption"]:
        lines.append(f"  training videos left without a caption (not in train.tsv): "
                     f"{', '.join(s['train_videos_without_caption'])}")
    lines.append(f"  training captions with <unk>: {s['train_unk_captions']} "
                 f"({s['train_unk_tokens']} <unk> tokens)")
    if s["eval_items_all_long"]:
        lines.append(f"  evaluation videos whose captions all exceed {s['max_words']} words (raise "
                     f"--max-target-positions to load them): {', '.join(s['eval_items_all_long'])}")
    for note in s.get("notes", []):
        lines.append(f"  {note}")
    return "\n".join(lines)


# --- MSR-VTT ------------------------------------------------------------------
