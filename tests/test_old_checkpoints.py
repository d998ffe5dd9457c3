"""Checkpoints made before a restructuring of the package still load and decode to the same
captions: one tiny checkpoint per paradigm (AR, NACF, SAIC, NARVL over features, RDT), trained by
the arena recipe and committed with the captions each decoded to when it was made
(``tests/fixtures/old_checkpoints/make.py``)."""
import json
import os

import pytest

from fairseq_nar_caption import inference

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "old_checkpoints")
with open(os.path.join(HERE, "expected.json"), encoding="utf-8") as f:
    EXPECTED = json.load(f)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_checkpoint_decodes_to_the_same_captions(name):
    data = os.path.join(HERE, "data")
    args = [os.path.join(data, a) if a == "retrieval.json" else a for a in EXPECTED[name]["args"]]
    loaded = inference.load(data, ["--path", os.path.join(HERE, f"{name}.pt"), "--cpu", *args])
    loaded.task.load_dataset("test")
    captions = inference.decode_dataset(loaded, loaded.task.dataset("test"), batch_size=4)
    assert captions == EXPECTED[name]["captions"]
