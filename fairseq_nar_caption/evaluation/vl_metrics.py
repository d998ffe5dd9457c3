"""Metrics of the vision-language tasks (NARVL): VQA, visual grounding, entailment.

- the answer field (``"conf|!+answer&&conf|!+answer"`` -> ``{answer: confidence}``) is read by
  ``data.ofa_tsv.parse_ofa_answers``, the one reader training and scoring share.
- ``normalize_answer(s)``: the answer normalisation of the official VQA evaluation
  (``vqaEval.py`` of the VQA API), see below.
- ``vqa_score(pred, answers_conf)``: VQA soft accuracy of one prediction as OFA
  computes it (``tasks/mm_tasks/vqa_gen.py``: ``ref_dict.get(hyp, 0)``): the
  confidence of the predicted answer in the answer field, 0 when absent.  With the
  field built from the 10 human answers (``answer_soft_score``, as
  ``scripts/prepare_vqav2.py`` does) this is the official VQA accuracy
  ``mean over the 10 leave-one-out subsets of min(1, #matches / 3)``.
- ``grounding_hits(pred_boxes, gt_boxes, thr=0.5)``: Acc@IoU>=thr per item.
- ``accuracy(preds, golds)``: fraction of exact matches.

``normalize_answer`` implements, in the official order:
1. newlines/tabs -> spaces, strip;
2. punctuation (``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``): deleted when it
   touches a space or the text has a digit-comma-digit group, otherwise replaced
   by a space (the official rule, quirks included); a period not followed by a
   digit is deleted (what the official ``periodStrip`` regex does), so "2.5" stays;
3. lower case; number words ``none, zero, one .. ten`` -> ``0 .. 10``; articles
   ``a, an, the`` dropped; common apostrophe-less contractions restored
   (``dont`` -> ``don't``; a subset of the official table, listed in ``_CONTRACTIONS``).
Differences from the official script: it normalises the ground-truth answers only
when the 10 answers disagree, we always normalise both sides (identical answers
normalise identically, so only answers that disagree with their own normal form
are affected); the contraction table is a subset.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

from ..data.boxes import iou

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's",
    "someones": "someone's", "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "wed": "we'd",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _process_punctuation(text: str) -> str:
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_answer(s: str) -> str:
    """VQA-style answer normalisation (module docstring): "Two dogs!" -> "2 dogs"."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    s = _process_punctuation(s)
    words = []
    for w in s.lower().split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def answer_soft_score(num_matches: int, num_answers: int = 10) -> float:
    """Official VQA accuracy of an answer given by ``num_matches`` of ``num_answers`` humans:
    the mean over the leave-one-out subsets of min(1, matches in the subset / 3).
    For 10 answers: 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0."""
    if not 0 <= num_matches <= num_answers or num_answers < 1:
        raise ValueError(f"{num_matches} matches among {num_answers} answers")
    if num_answers == 1:
        return float(min(1.0, num_matches / 3))
    total = num_matches * min(1.0, (num_matches - 1) / 3) + (num_answers - num_matches) * min(1.0, num_matches / 3)
    return total / num_answers


def vqa_score(pred: str, answers_conf: Dict[str, float]) -> float:
    """Soft accuracy of ``pred``: the confidence of its answer in ``answers_conf`` (0 if absent).

    Both the prediction and the answers are compared after ``normalize_answer``
    (when two answers normalise alike, the higher confidence counts).
    """
    normalized: Dict[str, float] = {}
    for answer, conf in answers_conf.items():
        key = normalize_answer(answer)
        normalized[key] = max(conf, normalized.get(key, 0.0))
    return float(normalized.get(normalize_answer(pred), 0.0))


def grounding_hits(pred_boxes: Sequence[Optional[Sequence[float]]], gt_boxes: Sequence[Sequence[float]],
                   thr: float = 0.5) -> List[bool]:
    """Per item, whether IoU(pred, gt) >= ``thr`` (Acc@IoU>=0.5 with the default).

    A ``None`` prediction (e.g. a hypothesis without exactly four coordinates) is a miss.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} predicted boxes for {len(gt_boxes)} ground-truth boxes")
    return [p is not None and iou(p, g) >= thr for p, g in zip(pred_boxes, gt_boxes)]


def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of ``preds[i] == golds[i]`` (callers normalise the strings first if they need to)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("accuracy of an empty set")
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)
