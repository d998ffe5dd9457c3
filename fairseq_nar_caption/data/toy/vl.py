"""Vision-language items over the toy images: VQA, visual grounding, visual entailment.

All answers and labels are read off the scene (scenes.json), never guessed:
- VQA: colour / shape / count / existence / relative position / location
  questions with one- or two-word answers;
- grounding: a referring expression that matches exactly one object -> its box;
- entailment: a statement that the image entails, contradicts (the picture is
  complete, so an absent object is a contradiction), or cannot decide (neutral:
  material, weight, motion, ... of a depicted object).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..ofa_tsv import ENTAILMENT_LABELS  # the one list; its order fixes the toy draws
from . import render
from .captions import NUMBERS, RELATION_WORDS, SHAPE_NOUNS, SIZE_WORDS, choose, indefinite, plural, synonym
from .scenes import IMAGE_SIZE, ImageObject, region, relations

_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
# Referring by position: (relation every other candidate must satisfy, phrase).
_EXTREMES = {"left": ("on the left", "leftmost"), "right": ("on the right", "rightmost"),
             "above": ("at the top", "top"), "below": ("at the bottom", "bottom")}
_REGION_MARGIN = 4.0  # "where is ..." only for objects this far (pixels) from a region border


def ofa_answers(*answers: str) -> str:
    """OFA's VQA answer field: "conf|!+answer" joined by "&&"."""
    return "&&".join(f"1.0|!+{a}" for a in answers)


def referring_expressions(rng: np.random.Generator, objs: Sequence[ImageObject], i: int) -> Dict[str, List[str]]:
    """Expressions that pick out ``objs[i]`` alone, keyed by the attributes they use.

    Keys are sorted '+'-joined attribute names among colour, shape, size, position.
    (shape, colour) pairs are unique in a scene, so "the <colour> <shape>" always works.
    """
    o = objs[i]
    found: Dict[str, List[str]] = {}

    def shape_word() -> str:
        return synonym(rng, SHAPE_NOUNS[o.shape])

    def generic() -> str:
        return choose(rng, ("shape", "object", "one"))

    for attrs in (("colour", "shape"), ("shape",), ("colour",), ("shape", "size"), ("colour", "shape", "size"),
                  ("size",)):
        if sum(all(getattr(p, a) == getattr(o, a) for a in attrs) for p in objs) != 1:
            continue
        words = ["the"]
        if "size" in attrs:
            words.append(synonym(rng, SIZE_WORDS[o.size]))
        if "colour" in attrs:
            words.append(o.colour)
        words.append(shape_word() if "shape" in attrs else generic())
        found.setdefault("+".join(sorted(attrs)), []).append(" ".join(words))
    # Position: extreme among all objects, or among those of the same shape.
    for attrs, group in ((("position",), list(objs)), (("position", "shape"), [p for p in objs if p.shape == o.shape])):
        if len(group) < 2:
            continue
        noun = shape_word() if "shape" in attrs else choose(rng, ("shape", "object"))
        for rel, (phrase, adjective) in _EXTREMES.items():
            if all(rel in relations(o, p, IMAGE_SIZE) for p in group if p is not o):
                text = f"the {noun} {phrase}" if rng.random() < 0.5 else f"the {adjective} {noun}"
                found.setdefault("+".join(sorted(attrs)), []).append(text)
    return found


def _expression(rng, objs, i, avoid: Tuple[str, ...] = ()) -> Optional[str]:
    """A random expression for ``objs[i]`` whose attributes exclude ``avoid`` (None if there is none)."""
    options = [e for key, exprs in referring_expressions(rng, objs, i).items()
               if not set(key.split("+")) & set(avoid) for e in exprs]
    return choose(rng, options) if options else None


# --------------------------------------------------------------------------- VQA
def _q_colour(rng, objs):
    i = int(rng.integers(len(objs)))
    ref = _expression(rng, objs, i, avoid=("colour",))
    return ref and (f"what {choose(rng, ('colour', 'color'))} is {ref}?", ofa_answers(objs[i].colour))


def _q_shape(rng, objs):
    i = int(rng.integers(len(objs)))
    ref = _expression(rng, objs, i, avoid=("shape",))
    return ref and (f"what shape is {ref}?", ofa_answers(objs[i].shape))


def _q_count(rng, objs):
    kind = choose(rng, ("all", "colour", "shape"))
    if kind == "all":
        return "how many shapes are there?", ofa_answers(str(len(objs)))
    present = [getattr(o, kind) for o in objs]
    values = render.COLOURS if kind == "colour" else render.SHAPES
    value = choose(rng, present) if rng.random() < 0.7 else choose(rng, values)
    count = str(present.count(value))
    if kind == "colour":
        return f"how many {value} shapes are there?", ofa_answers(count)
    return f"how many {plural(value)} are there?", ofa_answers(count)


def _q_exists(rng, objs):
    if rng.random() < 0.5:
        o = objs[int(rng.integers(len(objs)))]
        shape, colour, answer = o.shape, o.colour, "yes"
    else:
        present = {(o.shape, o.colour) for o in objs}
        absent = [(s, c) for s in render.SHAPES for c in render.COLOURS if (s, c) not in present]
        (shape, colour), answer = choose(rng, absent), "no"
    return f"is there {indefinite(colour + ' ' + synonym(rng, SHAPE_NOUNS[shape]))}?", ofa_answers(answer)


def _relation_pair(rng, objs):
    """(i, j, relation) with a clearly holding relation of objs[i] to objs[j], or None."""
    pairs = [(i, j, rel) for i in range(len(objs)) for j in range(len(objs)) if i != j
             for rel in relations(objs[i], objs[j], IMAGE_SIZE)]
    return choose(rng, pairs) if pairs else None


def _q_relation(rng, objs):
    pair = _relation_pair(rng, objs)
    if pair is None:
        return None
    i, j, rel = pair
    asked, answer = (rel, "yes") if rng.random() < 0.5 else (_OPPOSITE[rel], "no")
    a, b = _expression(rng, objs, i, avoid=("position",)), _expression(rng, objs, j, avoid=("position",))
    return f"is {a} {synonym(rng, RELATION_WORDS[asked])} {b}?", ofa_answers(answer)


def _q_where(rng, objs):
    i = int(rng.integers(len(objs)))
    o = objs[i]
    borders = (IMAGE_SIZE * 3 / 8, IMAGE_SIZE * 5 / 8)
    if min(abs(v - b) for v in (o.cx, o.cy) for b in borders) < _REGION_MARGIN:
        return None  # too close to a region border to have one right answer
    row, col = region(o.cx, o.cy, IMAGE_SIZE)
    if (row, col) == ("middle", "centre"):
        answers = ("centre", "middle")
    else:
        answers = (" ".join(w for w in (row, col) if w not in ("middle", "centre")),)
    return f"where is {_expression(rng, objs, i, avoid=('position',))}?", ofa_answers(*answers)


_QUESTIONS = (_q_colour, _q_shape, _q_count, _q_exists, _q_relation, _q_where)


def vqa_items(rng: np.random.Generator, objs: List[ImageObject], n: int) -> List[Tuple[str, str]]:
    """``n`` (question, answers) pairs of different question types."""
    items = []
    for k in rng.permutation(len(_QUESTIONS)):
        item = _QUESTIONS[k](rng, objs)
        if item:
            items.append(item)
            if len(items) == n:
                break
    return items


# --------------------------------------------------------------------------- grounding
def grounding_item(rng: np.random.Generator, objs: List[ImageObject]) -> Tuple[str, List[int]]:
    """A referring expression unique in the image and the box of its object."""
    i = int(rng.integers(len(objs)))
    return _expression(rng, objs, i), objs[i].box


# --------------------------------------------------------------------------- entailment
def _statements(rng, objs, truth: bool) -> List[str]:
    """True (``truth``) or false statements about the scene."""
    n = len(objs)
    i = int(rng.integers(n))
    o = objs[i]
    out = []
    count = n if truth else choose(rng, [k for k in NUMBERS if k != n])
    out.append("there is one shape" if count == 1 else f"there are {NUMBERS[count]} shapes")
    if truth:
        out.append(f"there is {indefinite(o.colour + ' ' + synonym(rng, SHAPE_NOUNS[o.shape]))}")
    else:
        present = {(p.shape, p.colour) for p in objs}
        shape, colour = choose(rng, [(s, c) for s in render.SHAPES for c in render.COLOURS if (s, c) not in present])
        out.append(f"there is {indefinite(colour + ' ' + synonym(rng, SHAPE_NOUNS[shape]))}")
    ref = _expression(rng, objs, i, avoid=("colour",))
    if ref:
        colour = o.colour if truth else choose(rng, [c for c in render.COLOURS if c != o.colour])
        out.append(f"{ref} is {colour}")
    ref = _expression(rng, objs, i, avoid=("shape",))
    if ref:
        shape = o.shape if truth else choose(rng, [s for s in render.SHAPES if s != o.shape])
        out.append(f"{ref} is {indefinite(synonym(rng, SHAPE_NOUNS[shape]))}")
    pair = _relation_pair(rng, objs)
    if pair:
        a, b, rel = pair
        rel = rel if truth else _OPPOSITE[rel]
        out.append(f"{_expression(rng, objs, a, avoid=('position',))} is {synonym(rng, RELATION_WORDS[rel])} "
                   f"{_expression(rng, objs, b, avoid=('position',))}")
    return out


def _neutral(rng, objs) -> str:
    """A statement about a depicted object that the picture cannot decide."""
    ref = _expression(rng, objs, int(rng.integers(len(objs))))
    return choose(rng, (
        f"{ref} is made of {choose(rng, ('wood', 'metal', 'paper', 'plastic', 'glass'))}",
        f"{ref} is {choose(rng, ('heavy', 'hot', 'cold', 'soft', 'expensive'))}",
        f"{ref} is {choose(rng, ('moving', 'spinning', 'about to fall', 'rolling away'))}",
        f"someone drew {ref} by hand",
        f"{ref} belongs to a child",
        "there is another shape outside the picture",
    ))


def entailment_item(rng: np.random.Generator, objs: List[ImageObject]) -> Tuple[str, str]:
    """(hypothesis, label) with the label drawn uniformly from ENTAILMENT_LABELS."""
    label = choose(rng, ENTAILMENT_LABELS)
    if label == "neutral":
        return _neutral(rng, objs), label
    return choose(rng, _statements(rng, objs, truth=label == "entailment")), label
