#!/usr/bin/env python
"""VQAv2 -> OFA VQA TSV (one split per call) for the NARVL ``vqa`` task.

Usage::

    python scripts/prepare_vqav2.py \\
        --questions v2_OpenEnded_mscoco_train2014_questions.json \\
        --annotations v2_mscoco_train2014_annotations.json \\
        --image-dir COCO/train2014 --out data/vl/vqa/vqa_train.tsv \\
        [--answers-out data/vl/vqa/answers.txt --min-answer-count 9]

    # test-dev / test: no annotations, the answer column stays empty
    python scripts/prepare_vqav2.py --questions v2_OpenEnded_mscoco_test-dev2015_questions.json \\
        --image-dir COCO/test2015 --out data/vl/vqa/vqa_testdev.tsv

Inputs: the VQAv2 questions file (``{"data_subtype": "train2014", "questions":
[{"question_id", "image_id", "question"}]}``), optionally its annotations file
(``{"annotations": [{"question_id", "image_id", "multiple_choice_answer",
"answers": [{"answer", "answer_confidence", "answer_id"}] x 10}]}``) and the COCO
images: ``<image-dir>/COCO_<data_subtype>_<image_id:012d>.jpg`` unless
``--image-pattern`` (a ``str.format`` pattern with ``{image_id}``) says otherwise.

Output: OFA layout (``data/ofa_tsv.OFA_COLUMNS["vqa"]``: question_id, image_id,
question, answers, objects (empty), image; no header), rows in the questions
file's order.  The answer field is OFA's ``conf|!+answer&&...``: every distinct
human answer, normalised with ``evaluation/vl_metrics.normalize_answer`` (the
official VQA normalisation), with its VQA soft score
``vl_metrics.answer_soft_score(#humans who gave it, #humans)`` (the official
leave-one-out accuracy: 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >=4 of 10), so that
``vl_metrics.vqa_score`` of a prediction is its official VQA accuracy.

``--answers-out`` writes the answer-candidate list: ``answer<TAB>count`` of the
normalised ``multiple_choice_answer`` of this split, those seen at least
``--min-answer-count`` times (default 9, the common 3,129-answer list when run on
train+val), most frequent first.  Errors name the file and the question.
"""
from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import List, Optional

from fairseq_nar_caption.cli.common import error_exit
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.files import load_json
from fairseq_nar_caption.data.ofa_tsv import OFA_COLUMNS, ImageEncoder, TsvWriter, clean_text, format_ofa_answers
from fairseq_nar_caption.evaluation.vl_metrics import answer_soft_score, normalize_answer
from fairseq_nar_caption.files import atomic_write_text


def soft_answers(answers: List[str]) -> dict:
    """Normalised answer -> VQA soft score, from the human answers (empty normal forms are not listed)."""
    norm = [normalize_answer(a) for a in answers]
    return {a: answer_soft_score(m, len(norm)) for a, m in Counter(norm).items() if a}


def prepare(questions: str, image_dir: str, out: str, annotations: Optional[str] = None,
            image_pattern: Optional[str] = None, answers_out: Optional[str] = None,
            min_answer_count: int = 9) -> dict:
    qdoc = load_json(questions, "VQA questions")
    if not isinstance(qdoc, dict) or not isinstance(qdoc.get("questions"), list) or not qdoc["questions"]:
        raise DataError(f"{questions}: no 'questions' list (expected a VQAv2 questions file)")
    if image_pattern is None:
        sub = qdoc.get("data_subtype")
        if not isinstance(sub, str):
            raise DataError(f"{questions}: no 'data_subtype' to name the images; pass --image-pattern")
        image_pattern = "COCO_" + sub + "_{image_id:012d}.jpg"
    anns = None
    if annotations:
        adoc = load_json(annotations, "VQA annotations")
        if not isinstance(adoc, dict) or not isinstance(adoc.get("annotations"), list):
            raise DataError(f"{annotations}: no 'annotations' list (expected a VQAv2 annotations file)")
        anns = {}
        for k, a in enumerate(adoc["annotations"]):
            if not isinstance(a, dict) or "question_id" not in a:
                raise DataError(f"{annotations}: annotations[{k}] has no 'question_id'")
            anns[a["question_id"]] = a
    elif answers_out:
        raise DataError("--answers-out needs --annotations")

    rows, mc_answers, missing_images = [], Counter(), []
    for k, q in enumerate(qdoc["questions"]):
        try:
            qid, image_id, text = q["question_id"], q["image_id"], clean_text(str(q["question"]))
        except (KeyError, TypeError):
            raise DataError(f"{questions}: questions[{k}] needs 'question_id', 'image_id', 'question'") from None
        where = f"question {qid}"
        if not text:
            raise DataError(f"{questions}: {where}: empty question")
        answer_field = ""
        if anns is not None:
            a = anns.get(qid)
            if a is None:
                raise DataError(f"{annotations}: {where} has no annotation")
            if a.get("image_id") != image_id:
                raise DataError(f"{annotations}: {where}: annotation image {a.get('image_id')} != question image {image_id}")
            humans = a.get("answers")
            if not isinstance(humans, list) or not humans or not all(isinstance(h, dict) and isinstance(h.get("answer"), str)
                                                                      for h in humans):
                raise DataError(f"{annotations}: {where}: 'answers' is not a list of {{'answer': str}}")
            scored = soft_answers([h["answer"] for h in humans])
            if not scored:
                raise DataError(f"{annotations}: {where}: every human answer is empty after normalisation")
            try:
                answer_field = format_ofa_answers(scored)
            except ValueError as e:
                raise DataError(f"{annotations}: {where}: {e}") from None
            if isinstance(a.get("multiple_choice_answer"), str) and normalize_answer(a["multiple_choice_answer"]):
                mc_answers[normalize_answer(a["multiple_choice_answer"])] += 1
        try:
            img = os.path.join(image_dir, image_pattern.format(image_id=image_id))
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"--image-pattern {image_pattern!r} cannot name image {image_id} ({e})") from None
        if not os.path.isfile(img):
            missing_images.append(f"{where}: {img}")
        rows.append((str(qid), str(image_id), text, answer_field, img))
    if missing_images:
        raise DataError(f"{image_dir}: {len(missing_images)} image file(s) missing, e.g. {'; '.join(missing_images[:5])}")

    encoder = ImageEncoder()
    with TsvWriter(out, OFA_COLUMNS["vqa"]) as w:
        for qid, iid, text, answers, img in rows:
            w.write([qid, iid, text, answers, "", encoder.encode(img)], item=f"question {qid}")
    summary = {"questions": len(rows), "images": len({r[1] for r in rows}), "annotated": anns is not None}
    if answers_out:
        kept = sorted(((a, c) for a, c in mc_answers.items() if c >= min_answer_count), key=lambda ac: (-ac[1], ac[0]))
        if not kept:
            raise DataError(f"{annotations}: no answer is seen {min_answer_count} times (lower --min-answer-count)")
        atomic_write_text(answers_out, "".join(f"{a}\t{c}\n" for a, c in kept))
        summary["candidates"] = len(kept)
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", required=True, help="v2_OpenEnded_mscoco_<split>_questions.json")
    p.add_argument("--annotations", help="v2_mscoco_<split>_annotations.json (absent for test splits)")
    p.add_argument("--image-dir", required=True, help="COCO image folder of the split")
    p.add_argument("--image-pattern", help="image file name pattern, default COCO_<data_subtype>_{image_id:012d}.jpg")
    p.add_argument("--out", required=True, help="output TSV")
    p.add_argument("--answers-out", help="write the answer-candidate list (answer<TAB>count) here")
    p.add_argument("--min-answer-count", type=int, default=9, help="candidate answers seen at least this often")
    a = p.parse_args(argv)
    try:
        s = prepare(a.questions, a.image_dir, a.out, a.annotations, a.image_pattern, a.answers_out, a.min_answer_count)
    except DataError as e:
        error_exit(e, "prepare_vqav2")
    print(f"VQAv2 {a.questions} -> {a.out}: {s['questions']} questions on {s['images']} images"
          + ("" if s["annotated"] else " (no annotations: empty answer column)"))
    if "candidates" in s:
        print(f"  {a.answers_out}: {s['candidates']} candidate answers (seen >= {a.min_answer_count} times)")
    return s


if __name__ == "__main__":
    main()
