"""Caption grammars: several correct, differently worded captions per image or clip.

Captions vary the way human ones do: synonyms (square / box / block, large /
big), word order ("a red circle to the left of a blue square" vs "a blue square
to the right of a red circle"), level of detail (size, position or colour left
out, counts such as "two shapes"), and framing ("there is ...", "a picture of
...", "a video of ...").  They are plain lower-case words without punctuation;
the caller still passes them through ``text.normalize_caption``.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np

from .scenes import IMAGE_SIZE, VIDEO_SIZE, ImageObject, VideoObject, region, relations

MIN_WORDS, MAX_WORDS = 4, 20

SHAPE_NOUNS = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
_PLURALS = {"box": "boxes", "cross": "crosses", "plus sign": "plus signs", "rhombus": "rhombuses"}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium sized", "medium"), "large": ("large", "big")}
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "near": ("next to", "beside", "near"),
}
NUMBERS = {1: "one", 2: "two", 3: "three"}
IMAGE_FRAMES = ("", "there is", "an image of", "a picture of", "a picture showing", "a drawing of", "an image showing")
BACKGROUNDS = ("a grey background", "a gray background", "a dark background", "a plain background")


def choose(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def synonym(rng: np.random.Generator, options: Sequence[str]) -> str:
    """The first (canonical) word half of the time, else any of them."""
    return options[0] if rng.random() < 0.5 else choose(rng, options)


def plural(noun: str) -> str:
    return _PLURALS.get(noun, noun + "s")


def indefinite(phrase: str) -> str:
    """Prefix "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def noun(rng, obj, p_size: float = 0.5, p_colour: float = 0.9, colour: str = None) -> str:
    """Noun phrase without determiner: "[size] [colour] shape", e.g. "big red ball"."""
    size = synonym(rng, SIZE_WORDS[obj.size]) if rng.random() < p_size else ""
    colour = (colour or obj.colour) if rng.random() < p_colour else ""
    return _join(size, colour, synonym(rng, SHAPE_NOUNS[obj.shape]))


def np_a(rng, obj, **kw) -> str:
    return indefinite(noun(rng, obj, **kw))


def relation_phrase(rng, a, b, size: int) -> str:
    """A relation word that holds for ``a`` with respect to ``b`` ("" if none clearly holds)."""
    rels = relations(a, b, size)
    if np.hypot(a.cx - b.cx, a.cy - b.cy) < 0.55 * size:
        rels.append("near")
    return synonym(rng, RELATION_WORDS[choose(rng, rels)]) if rels else ""


def position_phrase(rng, cx: float, cy: float, size: int, picture: str = "image") -> str:
    """Where a point lies in the 3x3 layout: "on the left", "in the top right corner", ..."""
    row, col = region(cx, cy, size)
    tail = choose(rng, ("", "", f"of the {picture}"))
    side = {"left": ("on the left", "on the left side"), "right": ("on the right", "on the right side"),
            "top": ("at the top", "near the top"), "bottom": ("at the bottom", "near the bottom")}
    if row == "middle" and col == "centre":
        return _join(choose(rng, ("in the centre", "in the middle")), tail)
    if row == "middle":
        return _join(choose(rng, side[col]), tail)
    if col == "centre":
        return _join(choose(rng, side[row]), tail)
    options = [f"in the {row} {col} corner", f"in the {row} {col}", f"at the {row} {col}"]
    return _join(choose(rng, options + [choose(rng, side[row]), choose(rng, side[col])]), tail)


def _sample_distinct(rng: np.random.Generator, make: Callable[[], str], n: int, where: str) -> List[str]:
    """``n`` distinct captions of MIN_WORDS to MAX_WORDS words from the sampler ``make``."""
    found: List[str] = []
    for _ in range(100 * n):
        caption = " ".join(make().split())
        if MIN_WORDS <= len(caption.split()) <= MAX_WORDS and caption not in found:
            found.append(caption)
            if len(found) == n:
                return found
    raise RuntimeError(f"{where}: the caption grammar produced only {len(found)} distinct captions, need {n}")


# --------------------------------------------------------------------------- images
def _image_caption(rng: np.random.Generator, objs: List[ImageObject]) -> str:
    frame = choose(rng, IMAGE_FRAMES)
    background = choose(rng, BACKGROUNDS)
    n = len(objs)
    if n == 1:
        o = objs[0]
        where = position_phrase(rng, o.cx, o.cy, IMAGE_SIZE)
        return choose(rng, (
            lambda: _join(frame, np_a(rng, o), where if rng.random() < 0.6 else ""),
            lambda: _join(np_a(rng, o), "is", where),
            lambda: _join(where, "there is", np_a(rng, o)),
            lambda: _join("a single", noun(rng, o), where if rng.random() < 0.5 else ""),
            lambda: _join(np_a(rng, o), "on", background),
        ))()

    order = [objs[i] for i in rng.permutation(n)]  # which object gets mentioned first
    a, b = order[0], order[1]
    p_size = 0.5 if n == 2 else 0.25  # long lists: fewer size words
    templates = [lambda: _join(frame, *(np_a(rng, o, p_size=p_size) for o in order[:-1]),
                               "and", np_a(rng, order[-1], p_size=p_size))]
    if n == 2:
        if rng.random() < 0.3:  # a vague caption now and then, not in every set
            templates.append(lambda: _join(NUMBERS[n], choose(rng, ("shapes", "objects")), "on", background))
    else:
        templates.append(lambda: _join(NUMBERS[n], choose(rng, ("shapes", "objects")), "including", np_a(rng, a)))
    rel = relation_phrase(rng, a, b, IMAGE_SIZE)
    if rel:
        templates += [lambda: _join(frame, np_a(rng, a), rel, np_a(rng, b)),
                      lambda: _join(np_a(rng, a), "is", rel, np_a(rng, b))]
        if n == 3:
            c = order[2]
            templates.append(lambda: _join(np_a(rng, a, p_size=0.3), rel, np_a(rng, b, p_size=0.3), "with",
                                           np_a(rng, c, p_size=0.0), position_phrase(rng, c.cx, c.cy, IMAGE_SIZE)))
    # Counts over a shared shape or colour: "two circles one red and one blue", "two red shapes".
    for key in ("shape", "colour"):
        groups = {}
        for o in objs:
            groups.setdefault(getattr(o, key), []).append(o)
        for value, group in groups.items():
            if len(group) < 2:
                continue
            count = NUMBERS[len(group)]
            rest = [o for o in objs if getattr(o, key) != value]
            tail = ("and " + np_a(rng, rest[0], p_size=0.0)) if rest else ""
            if key == "shape":
                shape_pl = plural(synonym(rng, SHAPE_NOUNS[value]))
                templates.append(lambda count=count, shape_pl=shape_pl, tail=tail: _join(count, shape_pl, tail))
                if len(group) == 2 and not rest:
                    templates.append(lambda shape_pl=shape_pl, g=group: _join(
                        "two", shape_pl, "one", g[0].colour, "and one", g[1].colour))
            else:
                templates.append(lambda count=count, value=value, tail=tail: _join(
                    count, value, choose(rng, ("shapes", "objects")), tail))
    # Overlapping pair: objs[0] is partly hidden by a later object.
    hidden = [o for o in objs if o.occluded]
    if hidden:
        back = hidden[0]
        front = next(o for o in objs[objs.index(back) + 1:] if _boxes_overlap(o, back))
        templates += [lambda: _join(np_a(rng, front), "in front of", np_a(rng, back)),
                      lambda: _join(np_a(rng, back), "partly hidden behind", np_a(rng, front)),
                      lambda: _join(np_a(rng, front), choose(rng, ("overlapping", "on top of")), np_a(rng, back))]
    return choose(rng, templates)()


def _boxes_overlap(a: ImageObject, b: ImageObject) -> bool:
    return a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]


def image_captions(rng: np.random.Generator, objs: List[ImageObject], n: int, where: str) -> List[str]:
    """``n`` distinct captions of an image scene."""
    return _sample_distinct(rng, lambda: _image_caption(rng, objs), n, where)


# --------------------------------------------------------------------------- videos
# (finite form, -ing form) of each event's verb phrases.
_MOVE = {
    "left": [("moves to the left", "moving to the left"), ("moves left", "moving left"),
             ("slides to the left", "sliding to the left"), ("slides left", "sliding left"),
             ("goes left", "going left"), ("travels to the left", "travelling to the left"),
             ("moves from right to left", "moving from right to left")],
    "right": [("moves to the right", "moving to the right"), ("moves right", "moving right"),
              ("slides to the right", "sliding to the right"), ("slides right", "sliding right"),
              ("goes right", "going right"), ("travels to the right", "travelling to the right"),
              ("moves from left to right", "moving from left to right")],
    "up": [("moves up", "moving up"), ("moves upwards", "moving upwards"), ("rises", "rising"),
           ("goes up", "going up"), ("slides up", "sliding up"),
           ("moves from bottom to top", "moving from bottom to top")],
    "down": [("moves down", "moving down"), ("moves downwards", "moving downwards"), ("falls", "falling"),
             ("drops", "dropping"), ("goes down", "going down"), ("slides down", "sliding down"),
             ("moves from top to bottom", "moving from top to bottom")],
}
VERB_PHRASES = {
    **{f"move_{d}": phrases for d, phrases in _MOVE.items()},
    "grow": [("grows", "growing"), ("grows bigger", "growing bigger"), ("gets bigger", "getting bigger"),
             ("becomes larger", "becoming larger"), ("expands", "expanding"),
             ("increases in size", "increasing in size"), ("grows larger", "growing larger")],
    "shrink": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("becomes smaller", "becoming smaller"),
               ("decreases in size", "decreasing in size"), ("shrinks in size", "shrinking in size")],
    "appear": [("appears", "appearing"), ("shows up", "showing up"), ("pops up", "popping up"),
               ("comes into view", "coming into view"), ("suddenly appears", "suddenly appearing")],
    "disappear": [("disappears", "disappearing"), ("vanishes", "vanishing"),
                  ("disappears from view", "disappearing from view"), ("suddenly vanishes", "suddenly vanishing")],
    "turn": [("turns {new}", "turning {new}"), ("changes to {new}", "changing to {new}"),
             ("changes colour to {new}", "changing colour to {new}"),
             ("changes color to {new}", "changing color to {new}"),
             ("changes from {old} to {new}", "changing from {old} to {new}"), ("becomes {new}", "becoming {new}")],
    "still": [("stays still", "staying still"), ("does not move", "not moving"), ("stays in place", "staying in place"),
              ("remains still", "remaining still"), ("sits still", "sitting still")],
}
VIDEO_FRAMES = ("a video of", "a clip of", "an animation of", "a video showing", "there is")


def _subject_verb(rng, obj: VideoObject, form: int = 0, det: str = None, p_size: float = 0.4) -> Tuple[str, str]:
    """Subject ("a"/"the" + the object as at the start) and a verb phrase (``form``: 0 finite, 1 -ing).

    The subject drops its colour when the verb names it ("the circle changes from red to blue").
    """
    verb = synonym(rng, VERB_PHRASES[obj.event])[form]
    phrase = noun(rng, obj, p_size=p_size, p_colour=0.0 if "{old}" in verb else 0.9)
    det = det or choose(rng, ("a", "the"))
    subject = "the " + phrase if det == "the" else indefinite(phrase)
    return subject, verb.format(old=obj.colour, new=obj.new_colour)


def _where(rng, obj: VideoObject) -> str:
    """Position of a non-moving object, taken where it is visible."""
    state = next(s for s in obj.track[1:] if s.visible)
    return position_phrase(rng, state.cx, state.cy, VIDEO_SIZE, picture=choose(rng, ("frame", "screen", "video")))


def _video_caption(rng: np.random.Generator, objs: List[VideoObject]) -> str:
    main = objs[0]
    moving = main.event.startswith("move")
    located = "" if moving else _where(rng, main)

    def progressive() -> str:  # "a red circle is moving left"
        subject, verb = _subject_verb(rng, main, 1)
        return _join(subject, "is", verb)

    def located_subject() -> str:  # "the red circle on the left turns blue"
        subject, verb = _subject_verb(rng, main, det="the")
        return _join(subject, located, verb)

    templates = [
        lambda: _join(*_subject_verb(rng, main), choose(rng, ("", "across the screen")) if moving else ""),
        progressive,
        lambda: _join(choose(rng, VIDEO_FRAMES), *_subject_verb(rng, main, 1, "a")),
    ]
    if main.event == "appear":
        templates.append(lambda: _join(*_subject_verb(rng, main, det="a"), located))
    elif not moving:
        templates.append(located_subject)
    if len(objs) == 2:
        other = objs[1]
        templates += [
            lambda: _join(*_subject_verb(rng, main), choose(rng, ("and", "while")), *_subject_verb(rng, other)),
            lambda: _join("one of the two shapes", _subject_verb(rng, main)[1]),
        ]
        if other.event != "still":
            templates.append(lambda: _join(*_subject_verb(rng, other)))
        if main.event in ("appear", "grow", "shrink", "turn", "still") and other.event == "still":
            # "a green triangle appears next to a red star", where the object becomes visible.
            state = next(s for s in main.track[1:] if s.visible)
            rel = relation_phrase(rng, state, other.track[-1], VIDEO_SIZE)
            if rel:
                templates.append(lambda: _join(*_subject_verb(rng, main, det="a"), rel,
                                               indefinite(noun(rng, other, p_size=0.0))))
    return choose(rng, templates)()


def video_captions(rng: np.random.Generator, objs: List[VideoObject], n: int, where: str) -> List[str]:
    """``n`` distinct captions of a clip."""
    return _sample_distinct(rng, lambda: _video_caption(rng, objs), n, where)
