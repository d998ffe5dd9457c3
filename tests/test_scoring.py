"""Caption scoring: COCO metrics, diversity, input readers and nar-caption-score.

Only test_coco_toolkit_example runs METEOR (one ~15 s JVM start); the other
tests select cheaper metrics with ``metrics=`` / ``--metrics``.
"""
import json
import math
from pathlib import Path

import pytest

from fairseq_nar_caption.cli.score import cli_main
from fairseq_nar_caption.data.manifest import CaptionRow, eval_item_ids, write_manifest
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.evaluation import coco_metrics
from fairseq_nar_caption.evaluation.coco_metrics import coco_scores
from fairseq_nar_caption.errors import MetricUnavailable
from fairseq_nar_caption.evaluation.diversity import diversity
from fairseq_nar_caption.evaluation.references import (
    load_coco_refs,
    load_coco_results,
    map_sample_ids,
    parse_generate_output,
)

REPO = Path(__file__).resolve().parents[1]
COCO_DIR = REPO / "tests" / "fixtures" / "coco_caption"  # the toolkit's example (CC BY 4.0 references)

# A fairseq-generate stdout excerpt: samples in batch order (3, 0, 2, 1), sample 0
# printed with --nbest 2, sample 2 with an empty hypothesis, logging around it.
GENERATE_OUTPUT = """\
2024-05-02 10:11:12 | INFO | fairseq_cli.generate | loaded 4 examples from: data-bin/test
S-3\timg_c
T-3\ta blue square
H-3\t-0.3012\tA blue square.
D-3\t-0.3012\tA blue square.
P-3\t-0.1020 -0.4101 -0.3915
S-0\timg_b
T-0\ta red circle
H-0\t-0.2543\ta red circle
D-0\t-0.2543\ta red circle
P-0\t-0.1020 -0.3012 -0.3597
H-0\t-0.9120\ta red ball
D-0\t-0.9120\ta red ball
P-0\t-0.1020 -0.3012 -2.3328
S-2\timg_d
T-2\ta cat sleeps
H-2\t-1.3862\t
D-2\t-1.3862\t
P-2\t-1.3862
S-1\timg_a
T-1\ttwo dogs play
H-1\t-0.1500\ttwo dogs play
D-1\t-0.1500\ttwo dogs play
P-1\t-0.1100 -0.2000 -0.1400
2024-05-02 10:11:13 | INFO | fairseq_cli.generate | Translated 4 sentences (9 tokens) in 0.1s
"""

# The split those samples come from: eval order img_b, img_a, img_d, img_c.
TOY_REFS = {
    "img_b": ["a red circle", "a big red circle on the table"],
    "img_a": ["two dogs play"],
    "img_d": ["a cat sleeps"],
    "img_c": ["a blue square"],
}


def write_toy_split(tmp_path):
    """Manifest, COCO reference file and fairseq-generate output of the toy split."""
    pairs = [(i, c) for i, caps in TOY_REFS.items() for c in caps]
    manifest = tmp_path / "test.tsv"
    write_manifest(str(manifest), [CaptionRow(i, c) for i, c in pairs])
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({
        "images": [{"id": i} for i in TOY_REFS],
        "annotations": [{"image_id": i, "id": k, "caption": c} for k, (i, c) in enumerate(pairs)],
    }))
    generate = tmp_path / "generate.txt"
    generate.write_text(GENERATE_OUTPUT)
    return manifest, refs, generate


def test_coco_toolkit_example(monkeypatch, tmp_path):
    """The coco-caption demo's scores (EXPECTED_SCORES.txt), SPICE reported skipped without its jars."""
    import gzip
    import shutil

    for name in ("captions_val2014_fakecap_subset_refs.json", "captions_val2014_fakecap_results.json"):
        with gzip.open(COCO_DIR / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    monkeypatch.setattr(coco_metrics, "SPICE_DIR", str(tmp_path))  # a folder without the SPICE jars
    refs = load_coco_refs(str(tmp_path / "captions_val2014_fakecap_subset_refs.json"))
    hyps = load_coco_results(str(tmp_path / "captions_val2014_fakecap_results.json"))
    assert len(refs) == len(hyps) == 1000
    scores = coco_scores(refs, hyps)
    expected = {"Bleu_1": 0.579, "Bleu_2": 0.404, "Bleu_3": 0.279, "Bleu_4": 0.191,
                "METEOR": 0.195, "ROUGE_L": 0.396, "CIDEr-D": 0.600}
    assert {k: round(scores[k], 3) for k in expected} == expected
    assert "SPICE" not in scores
    assert "jars not installed" in scores["skipped"]["SPICE"]


def test_spice_on_without_jars_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(coco_metrics, "SPICE_DIR", str(tmp_path))
    with pytest.raises(MetricUnavailable, match="stanford-corenlp-3.6.0"):
        coco_scores({"1": ["a dog"]}, {"1": "a dog"}, spice="on")


def test_id_mismatch_is_one_clear_error():
    refs = {"1": ["a dog runs"], "2": ["a cat sleeps"]}
    with pytest.raises(DataError) as err:
        coco_scores(refs, {"1": "a dog", "3": "a bird"}, spice="off")
    msg = str(err.value)
    assert "(2 hypotheses, 2 reference items)" in msg
    assert "1 hypothesis id(s) have no references, e.g. ['3']" in msg
    assert "1 reference id(s) have no hypothesis, e.g. ['2']" in msg


def test_ids_compare_as_strings_and_subset_scoring():
    # int reference ids match string hypothesis ids; item 2 is left out on request.
    refs = {1: ["a dog runs on the grass"], 2: ["a cat sleeps"]}
    scores = coco_scores(refs, {"1": "A dog runs on the grass."}, spice="off",
                         metrics=("Bleu",), require_all_refs=False)
    assert scores["Bleu_4"] == pytest.approx(1.0)  # identical after PTB tokenisation


def test_diversity_hand_example():
    hyps = {
        "1": "a man rides a horse",
        "2": "a man rides a horse",
        "3": "A dog  runs",  # normalises to the training caption "a dog runs"
        "4": "a cat <unk>",  # <unk> is not a word: "a cat"
    }
    div = diversity(hyps, train_captions=["a dog runs", "a man"], vocab_size=20)
    # Novel: captions 1, 2, 4 are not training captions -> 3/4.
    assert div["Novel"] == 0.75
    # Unique: 3 distinct captions ("a man rides a horse", "a dog runs", "a cat") of 4.
    assert div["Unique"] == 0.75
    # Words: a, man, rides, horse, dog, runs, cat -> 7 of a 20-word vocabulary.
    assert div["Vocab_words"] == 7
    assert div["Vocab_usage"] == 7 / 20
    # Bigrams: captions 1 and 2 have 4 each (a man, man rides, rides a, a horse),
    # caption 3 has 2 (a dog, dog runs), caption 4 has 1 (a cat): 11 in all, 7 distinct.
    # ("horse a" across captions 1 and 2 is not a bigram.)
    assert div["Dist-2"] == 7 / 11
    # Trigrams: 3 + 3 + 1 + 0 = 7, distinct: a man rides, man rides a, rides a horse, a dog runs.
    assert div["Dist-3"] == 4 / 7

    without = diversity(hyps, train_captions=None, vocab_size=None)
    assert without["Novel"] is None and without["Vocab_usage"] is None


def test_parse_generate_output_and_manifest_mapping(tmp_path):
    manifest, _, generate = write_toy_split(tmp_path)
    samples = parse_generate_output(str(generate))
    # First H line per sample (nbest 2 for sample 0); the empty hypothesis kept as "".
    assert samples == {3: "A blue square.", 0: "a red circle", 2: "", 1: "two dogs play"}
    assert parse_generate_output(GENERATE_OUTPUT.splitlines(keepends=True)) == samples

    order = eval_item_ids(str(manifest))
    assert order == ["img_b", "img_a", "img_d", "img_c"]
    assert map_sample_ids(samples, order) == {
        "img_b": "a red circle", "img_a": "two dogs play", "img_d": "", "img_c": "A blue square."}
    with pytest.raises(DataError, match=r"1 sample id\(s\) outside the 3 evaluation items"):
        map_sample_ids(samples, order[:3])

    bad = generate.with_name("bad.txt")
    bad.write_text("S-0\timg_b\nH-x\t-0.1\ta red circle\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: malformed hypothesis line"):
        parse_generate_output(str(bad))
    with pytest.raises(DataError, match="not found"):
        parse_generate_output(str(tmp_path / "missing.txt"))


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(coco_metrics, "SPICE_DIR", str(tmp_path))
    manifest, refs, generate = write_toy_split(tmp_path)
    train = tmp_path / "train.tsv"
    write_manifest(str(train), [CaptionRow("t1", "a red circle"), CaptionRow("t2", "a cat sleeps on a mat")])
    vocab = tmp_path / "dict.txt"
    # 10 words plus fairseq-preprocess's padding entry, which is not a word.
    vocab.write_text("".join(f"w{k} {10 - k}\n" for k in range(10)) + "madeupword0000 0\n")
    out = tmp_path / "scores.json"

    cli_main(["--refs", str(refs), "--generate-output", str(generate), "--manifest", str(manifest),
              "--train-manifest", str(train), "--dict", str(vocab), "--metrics", "Bleu", "CIDEr-D",
              "--name", "toy", "--json-out", str(out)])

    result = json.loads(out.read_text())
    assert result["name"] == "toy" and result["num_images"] == 4
    scores = result["scores"]
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr-D",
                           "Novel", "Unique", "Vocab_words", "Vocab_usage", "Dist-2", "Dist-3", "Repeat", "Unk"}
    # Every hypothesis word matches (PTB tokenisation drops "A ... ." to "a blue square"), so
    # Bleu_1 is the brevity penalty: 9 hypothesis words against closest reference lengths
    # 3 + 3 + 3 (for the empty hypothesis) + 3 = 12 -> exp(1 - 12/9).
    assert scores["Bleu_1"] == pytest.approx(math.exp(1 - 12 / 9))
    # Novel: all but "a red circle" (the empty caption included) -> 3/4; 8 words of 10.
    assert scores["Novel"] == 0.75 and scores["Unique"] == 1.0
    assert scores["Vocab_words"] == 8 and scores["Vocab_usage"] == 0.8
    assert set(result["skipped"]) == {"SPICE"}

    table = capsys.readouterr().out
    assert table.splitlines()[1].split()[:3] == ["toy", "4", f"{100 * scores['Bleu_1']:.1f}"]
    assert "skipped SPICE" in table
