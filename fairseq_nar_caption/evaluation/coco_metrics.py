"""COCO caption metrics computed with pycocoevalcap's tokenizer and scorers.

``coco_scores`` reproduces ``COCOEvalCap.evaluate()`` (the coco-caption toolkit)
without its SPICE step, which downloads Stanford CoreNLP 3.6.0 on first use and
therefore fails offline.  The pipeline is the toolkit's:

1. PTB-tokenise references and hypotheses (Stanford CoreNLP 3.4.1, lower-cased,
   punctuation removed) -- here in one JVM call for both;
2. BLEU-1..4 (corpus level, "closest" reference length), METEOR 1.5 (one JVM for
   the whole set), ROUGE-L and CIDEr on the tokenised text;
3. SPICE only when its CoreNLP 3.6.0 jars are already in pycocoevalcap's
   ``spice/lib`` folder.

pycocoevalcap's ``Cider`` scorer is CIDEr-D (clipped n-gram counts, Gaussian
length penalty with sigma 6, document frequencies from the references): it is
the number papers report as "CIDEr" / "C" and is returned here under the key
``"CIDEr-D"``.  On the toolkit's example (captions_val2014_fakecap_results.json)
this gives Bleu_1..4 0.579/0.404/0.279/0.191, METEOR 0.195, ROUGE_L 0.396 and
CIDEr-D 0.600, as its demo prints.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocoevalcap.spice
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs, cook_test
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ..errors import DataError, MetricUnavailable

# Metric groups selectable with ``metrics=``; "Bleu" yields Bleu_1..Bleu_4.
# SPICE is not in this list: it is controlled by the ``spice`` argument alone.
METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr-D")

# What pycocoevalcap's Spice scorer needs on disk (see its get_stanford_models.py,
# which would otherwise try to download the two CoreNLP jars).
SPICE_DIR = os.path.dirname(os.path.abspath(pycocoevalcap.spice.__file__))
SPICE_JARS = (
    "spice-1.0.jar",
    os.path.join("lib", "stanford-corenlp-3.6.0.jar"),
    os.path.join("lib", "stanford-corenlp-3.6.0-models.jar"),
)
CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"

# How many missing ids an id-mismatch error lists.
_SHOW_IDS = 5


def missing_spice_jars() -> List[str]:
    """Paths of the files SPICE needs that are absent (empty when SPICE can run)."""
    return [os.path.join(SPICE_DIR, j) for j in SPICE_JARS if not os.path.isfile(os.path.join(SPICE_DIR, j))]


def coco_scores(
    refs: Mapping[object, Sequence[str]],
    hyps: Mapping[object, str],
    spice: str = "auto",
    metrics: Iterable[str] = METRICS,
    require_all_refs: bool = True,
    progress: Optional[Callable[[str], object]] = None,
) -> Dict[str, object]:
    """Corpus-level COCO caption metrics of ``hyps`` against ``refs``.

    Args:
        refs: item id -> reference captions (raw text; at least one per item).
        hyps: item id -> generated caption (raw text; "" is allowed and scores 0).
            Ids of both are compared as strings (``1`` and ``"1"`` are the same item).
        spice: "auto" runs SPICE when its jars are present and skips it otherwise,
            "on" requires it (``MetricUnavailable`` when the jars are missing),
            "off" never runs it.
        metrics: a subset of ``METRICS`` to compute (e.g. ``("Bleu", "CIDEr-D")``
            to avoid METEOR's ~15 s JVM start).
        require_all_refs: every reference item must have a hypothesis (default).
            With False, items without a hypothesis are left out of the scoring.
        progress: called with the name of each step as it starts ("tokenise", then each
            metric; ``scoring_steps`` lists them), for a progress bar.

    Returns:
        ``{"Bleu_1": .., "Bleu_2": .., "Bleu_3": .., "Bleu_4": .., "METEOR": ..,
        "ROUGE_L": .., "CIDEr-D": .., "SPICE": .., "skipped": {metric: reason}}``:
        raw scores in [0, 1] (CIDEr-D in [0, 10]) as floats, for the selected
        metrics; "SPICE" only when it ran, otherwise ``skipped["SPICE"]`` says why.

    Raises:
        DataError: ids that do not match (naming the first few and the counts),
            an item whose references are not a non-empty list of captions.
        MetricUnavailable: no ``java`` on PATH, or spice="on" without its jars.
    """
    if spice not in ("auto", "off", "on"):
        raise ValueError(f"spice must be 'auto', 'off' or 'on', got {spice!r}")
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")

    refs, hyps = _match_ids(refs, hyps, require_all_refs)

    # Decide about SPICE before any (slow) JVM work.
    skipped: Dict[str, str] = {}
    run_spice = False
    if spice == "off":
        skipped["SPICE"] = "disabled (spice='off')"
    else:
        missing = missing_spice_jars()
        if not missing:
            run_spice = True
        elif spice == "on":
            raise MetricUnavailable(
                f"SPICE requested but its jars are missing: {missing}. Place the Stanford CoreNLP 3.6.0 "
                f"jars (stanford-corenlp-3.6.0.jar and -models.jar from {CORENLP_URL}) in {SPICE_DIR}/lib."
            )
        else:
            skipped["SPICE"] = f"Stanford CoreNLP 3.6.0 jars not installed in {SPICE_DIR}/lib"
    if shutil.which("java") is None:
        raise MetricUnavailable("pycocoevalcap needs `java` (Java 8+) on PATH for tokenisation and METEOR")

    step = progress or (lambda name: None)
    step("tokenise")
    gts, res = _tokenize(refs, hyps)

    scores: Dict[str, object] = {}
    for name in [m for m in METRICS if m in metrics] + (["SPICE"] if run_spice else []):
        step(name)
        scores.update(_metric(name, gts, res))
    scores["skipped"] = skipped
    return scores


def scoring_steps(metrics: Iterable[str] = METRICS, spice: str = "auto") -> List[str]:
    """The steps ``coco_scores`` reports to ``progress``, in order."""
    run_spice = spice != "off" and not missing_spice_jars()
    return ["tokenise"] + [m for m in METRICS if m in metrics] + (["SPICE"] if run_spice else [])


def _metric(name: str, gts, res) -> Dict[str, float]:
    scores: Dict[str, float] = {}
    if name == "Bleu":
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"Bleu_{n}": float(b) for n, b in enumerate(bleu, start=1)})
    elif name == "METEOR":
        # One METEOR JVM for the whole set; it is shut down when ``meteor`` is collected.
        meteor = Meteor()
        scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
    elif name == "ROUGE_L":
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    elif name == "CIDEr-D":
        scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    elif name == "SPICE":
        from pycocoevalcap.spice.spice import Spice  # imported here: only used with its jars present

        scores["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return scores


def _match_ids(
    refs: Mapping[object, Sequence[str]], hyps: Mapping[object, str], require_all_refs: bool
) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """Refs and hyps keyed by string ids, restricted to the scored items (hypothesis order)."""
    refs_s = _str_keys(refs, "reference")
    hyps_s = _str_keys(hyps, "hypothesis")
    problems = []
    no_refs = [i for i in hyps_s if i not in refs_s]
    if no_refs:
        problems.append(f"{len(no_refs)} hypothesis id(s) have no references, e.g. {no_refs[:_SHOW_IDS]}")
    if require_all_refs:
        no_hyp = [i for i in refs_s if i not in hyps_s]
        if no_hyp:
            problems.append(f"{len(no_hyp)} reference id(s) have no hypothesis, e.g. {no_hyp[:_SHOW_IDS]}")
    if problems:
        raise DataError(
            f"hypotheses and references do not match ({len(hyps_s)} hypotheses, {len(refs_s)} reference "
            "items): " + "; ".join(problems)
        )
    if not hyps_s:
        raise DataError("nothing to score: no hypotheses")
    bad = [i for i in hyps_s if isinstance(refs_s[i], str) or not refs_s[i]]
    if bad:
        raise DataError(f"{len(bad)} item(s) need a non-empty list of reference captions, e.g. {bad[:_SHOW_IDS]}")
    return {i: list(refs_s[i]) for i in hyps_s}, hyps_s


def _str_keys(d: Mapping[object, object], what: str) -> Dict[str, object]:
    out = {str(k): v for k, v in d.items()}
    if len(out) != len(d):
        raise DataError(f"{what} ids collide when compared as strings (e.g. 1 and '1')")
    return out


def _tokenize(refs: Dict[str, List[str]], hyps: Dict[str, str]) -> Tuple[Dict[str, List[str]], Dict[str, List[str]]]:
    """PTB-tokenise everything in one JVM call; returns pycocoevalcap's ``gts, res`` dicts."""
    ids = list(hyps)
    texts = [hyps[i] for i in ids]
    for i in ids:
        texts.extend(refs[i])
    tokens = _ptb_tokenize(texts)
    res = {i: [tokens[k]] for k, i in enumerate(ids)}
    gts, k = {}, len(ids)
    for i in ids:
        gts[i] = tokens[k:k + len(refs[i])]
        k += len(refs[i])
    return gts, res


def _ptb_tokenize(texts: List[str]) -> List[str]:
    """pycocoevalcap's PTBTokenizer on a list of strings.

    The tokenizer writes one caption per line and pairs output lines with inputs
    positionally, so whitespace (including "\\r" and other line breaks) is collapsed
    first, and blank captions -- which tokenise to "" anyway -- are not sent.
    """
    cleaned = [" ".join(t.split()) for t in texts]
    nonblank = {k: [{"caption": t}] for k, t in enumerate(cleaned) if t}
    out = [""] * len(texts)
    if nonblank:
        tokenized = PTBTokenizer().tokenize(nonblank)
        if len(tokenized) != len(nonblank):
            raise RuntimeError(
                f"PTBTokenizer returned {len(tokenized)} lines for {len(nonblank)} captions (line pairing broken)"
            )
        for k, (caption,) in tokenized.items():
            out[k] = caption
    return out


class CorpusCiderD(CiderScorer):
    """pycocoevalcap's CIDEr-D with the document frequencies and log N of a fixed corpus (its
    own ``compute_cider`` would take them from the scored batch), so per-item scores of any
    batch add up: over a whole split, the mean of ``scores`` is the corpus CIDEr-D of
    ``coco_scores`` (up to tokenisation: this one splits on spaces, no PTB tokenizer)."""

    ref_len = property(lambda self: self._log_n, lambda self, value: None)  # compute_cider sets it: ignored

    def __init__(self, corpus_refs: Sequence[Sequence[str]]):
        super().__init__(n=4, sigma=6.0)
        for refs in corpus_refs:
            self.crefs.append(cook_refs(list(refs)))
        self.compute_doc_freq()
        self._log_n = float(np.log(float(len(self.crefs))))
        self.crefs = []

    def scores(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
        self.crefs = [cook_refs(list(r)) for r in refs]
        self.ctest = [cook_test(h) for h in hyps]
        try:
            return np.array(self.compute_cider())
        finally:
            self.crefs, self.ctest = [], []
