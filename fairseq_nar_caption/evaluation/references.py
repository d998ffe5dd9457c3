"""Readers for the inputs of caption scoring.

- ``load_coco_refs``: a COCO caption annotation file (``images`` + ``annotations``)
  -> ``{image_id: [captions]}`` in the file's ``images`` order
  (``coco_image_order`` gives that order as a list).
- ``load_coco_results``: a COCO results file (``[{"image_id", "caption"}, ...]``).
- ``parse_generate_output``: fairseq-generate's stdout -> ``{sample_id: caption}``;
  ``map_sample_ids`` turns sample ids into item ids (sample ``i`` is the ``i``-th
  item of the evaluation order, see ``data.manifest.eval_item_ids``);
  ``parse_generate_targets`` reads its ``T-<id>`` lines (each item's first reference, as
  the task saw it) and ``check_sample_order`` refuses an evaluation order under which
  those targets are not the items' references (a references file in another order).

All ids are returned as strings (except fairseq's integer sample ids).  Bad input
raises ``DataError`` naming the file and the line or entry.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence, Union

from ..errors import DataError
from ..files import load_json


def load_coco_refs(path: str) -> Dict[str, List[str]]:
    """Reference captions per image id, in the order of the file's ``images`` list.

    Every image must have at least one caption and every annotation must belong to
    a listed image.
    """
    data = load_json(path, "COCO references")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{path}: not a COCO caption file (needs 'images' and 'annotations')")
    refs: Dict[str, List[str]] = {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise DataError(f"{path}: images[{k}] has no 'id'")
        image_id = str(img["id"])
        if image_id in refs:
            raise DataError(f"{path}: images[{k}]: duplicate image id {image_id}")
        refs[image_id] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise DataError(f"{path}: annotations[{k}] needs 'image_id' and a string 'caption'")
        image_id = str(ann["image_id"])
        if image_id not in refs:
            raise DataError(f"{path}: annotations[{k}]: image id {image_id} is not in 'images'")
        refs[image_id].append(ann["caption"])
    no_caption = [i for i, caps in refs.items() if not caps]
    if no_caption:
        raise DataError(f"{path}: {len(no_caption)} image(s) have no caption, e.g. {no_caption[:5]}")
    return refs


def coco_image_order(path: str) -> List[str]:
    """Image ids (strings) in the order of the reference file's ``images`` list."""
    return list(load_coco_refs(path))


def load_coco_results(path: str) -> Dict[str, str]:
    """Generated captions from a COCO results file, keyed by string image id."""
    data = load_json(path, "COCO results")
    if not isinstance(data, list):
        raise DataError(f"{path}: a COCO results file is a JSON list of {{'image_id', 'caption'}}")
    hyps: Dict[str, str] = {}
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or not isinstance(entry.get("caption"), str):
            raise DataError(f"{path}: entry {k} needs 'image_id' and a string 'caption'")
        image_id = str(entry["image_id"])
        if image_id in hyps:
            raise DataError(f"{path}: entry {k}: duplicate image id {image_id}")
        hyps[image_id] = entry["caption"]
    return hyps


def parse_generate_output(path_or_lines: Union[str, os.PathLike, Iterable[str]]) -> Dict[int, str]:
    """Hypotheses from fairseq-generate's stdout: ``{sample_id: text}``.

    Reads the ``H-<sample_id>\\t<score>\\t<text>`` lines and ignores every other
    line (S-/T-/D-/P- lines, logging).  Samples come in batch order, not id order;
    with ``--nbest`` > 1 the first (best) H line of a sample is kept.  An empty
    hypothesis prints as ``H-3\\t-1.2\\t`` (or with the trailing tab stripped) and
    is returned as "".

    ``path_or_lines`` is a file path or an iterable of lines.
    """
    if isinstance(path_or_lines, (str, os.PathLike)):
        source = os.fspath(path_or_lines)
        if not os.path.isfile(source):
            raise DataError(f"{source}: fairseq-generate output not found")
        with open(source, encoding="utf-8") as f:
            return _parse_generate_lines(f, source)
    return _parse_generate_lines(path_or_lines, "<generate output>")


def _parse_generate_lines(lines: Iterable[str], source: str) -> Dict[int, str]:
    hyps: Dict[int, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.startswith("H-"):
            continue
        fields = line.rstrip("\r\n").split("\t", 2)
        try:
            sample_id = int(fields[0][2:])
            float(fields[1])  # the score: checked only to recognise a well-formed line
        except (ValueError, IndexError):
            raise DataError(
                f"{source}:{lineno}: malformed hypothesis line {line.rstrip()!r} "
                "(expected 'H-<sample id>\\t<score>\\t<text>')"
            ) from None
        hyps.setdefault(sample_id, fields[2] if len(fields) == 3 else "")
    if not hyps:
        raise DataError(f"{source}: no 'H-<id>' hypothesis lines (is this fairseq-generate's stdout?)")
    return hyps


def map_sample_ids(samples: Dict[int, str], item_ids: Sequence[str], source: str = "generate output") -> Dict[str, str]:
    """``{sample_id: text}`` -> ``{item_ids[sample_id]: text}``, in evaluation order.

    ``item_ids`` is the evaluation order of the split (``eval_item_ids`` of its
    manifest, or the reference file's ``images`` order).  Sample ids outside it
    raise ``DataError``; items without a sample are simply absent (the scorer
    reports them).
    """
    out_of_range = sorted(s for s in samples if not 0 <= s < len(item_ids))
    if out_of_range:
        raise DataError(
            f"{source}: {len(out_of_range)} sample id(s) outside the {len(item_ids)} evaluation items, "
            f"e.g. {out_of_range[:5]}: the manifest or reference file lacks items of the decoded split "
            f"(wrong file?)"
        )
    return {item_ids[s]: samples[s] for s in sorted(samples)}


def parse_generate_targets(path: Union[str, os.PathLike]) -> Dict[int, str]:
    """The ``T-<sample_id>\t<target>`` lines of fairseq-generate's stdout (may be none)."""
    out: Dict[int, str] = {}
    with open(os.fspath(path), encoding="utf-8") as f:
        for line in f:
            if line.startswith("T-"):
                head, _, text = line.rstrip("\r\n").partition("\t")
                try:
                    out.setdefault(int(head[2:]), text)
                except ValueError:
                    continue
    return out


def _same_caption(target: str, reference: str) -> bool:
    """A decoded target equals a reference word for word; ``<unk>`` (printed ``<<unk>>``) matches any word."""
    t, r = target.lower().split(), reference.lower().split()
    return len(t) == len(r) and all(a == b or a in ("<unk>", "<<unk>>") for a, b in zip(t, r))


def check_sample_order(targets: Dict[int, str], item_ids: Sequence[str], references: Dict[str, List[str]],
                       source: str, order_from: str) -> None:
    """Refuse an evaluation order under which fairseq-generate's targets are not the references of
    the items their sample ids map to: the hypotheses would be scored against other images."""
    beyond = sorted(s for s in targets if s >= len(item_ids))
    if beyond:
        raise DataError(f"{source}: samples up to {beyond[-1]} were decoded, {order_from} holds only {len(item_ids)} "
                        f"items: it lacks items of the decoded split (references missing an image?); give the "
                        f"decoded split's references, or --manifest <split>.tsv")
    wrong = [(s, t) for s, t in sorted(targets.items())
             if 0 <= s < len(item_ids) and item_ids[s] in references
             and not any(_same_caption(t, r) for r in references[item_ids[s]])]
    if wrong:
        def owner(t):
            return next((k for k, i in enumerate(item_ids) if any(_same_caption(t, r) for r in references.get(i, ()))),
                        None)

        owners = [(s, t, owner(t)) for s, t in wrong]
        # a missing item: its own target belongs to no item, every later one to an earlier item
        earlier = [(s, t, k) for s, t, k in owners if k is not None and k < s]
        shifted = earlier and all(k is None or k < s for s, _, k in owners)
        s, t, k = earlier[0] if shifted else owners[0]
        if shifted:
            why = (f"it is a reference of item {item_ids[k]}, the {k}-th: {order_from} lacks {s - k} item(s) of the "
                   f"decoded split before it (references missing an image?)")
        elif k is None:
            why = (f"it is a reference of no item of {order_from}: the references are of another split or "
                   f"dataset than the decoded one")
        else:
            why = f"it is a reference of item {item_ids[k]}, the {k}-th: the references are in another order " \
                  f"than the decoded split"
        raise DataError(
            f"{source}: sample {s}'s target {t!r} is not a reference of item {item_ids[s]}, the {s}-th item of "
            f"{order_from} ({len(wrong)} of {len(targets)} samples disagree); {why}; pass --manifest "
            f"<split>.tsv of the decoded split")
