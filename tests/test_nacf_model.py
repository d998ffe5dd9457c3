"""NACF model and criterion: Eq. 3-8 pieces, AR-B initialisation, and a tiny NACF
(trained through the fairseq CLI on toy videos) that decodes with all six
algorithms and beats the most-frequent-caption baseline."""
import os

import pytest
import torch
from omegaconf import OmegaConf

from conftest import BIN, USER_DIR, decode_batched_and_single, make_dictionary, run_cli
from fairseq_nar_caption import inference
from fairseq_nar_caption.cli import score
from fairseq_nar_caption.criterions.nacf_loss import NACFLoss, nar_targets, random_mask
from fairseq_nar_caption.data.toy import ToyConfig, generate
from fairseq_nar_caption.data.visual_words import NOUN, OTHER, VERB
from fairseq_nar_caption.evaluation.baselines import most_frequent_caption
from fairseq_nar_caption.evaluation.coco_metrics import coco_scores
from fairseq_nar_caption.data.manifest import read_manifest
from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

COMMON = ["--user-dir", USER_DIR, "--task", "captioning", "--feature-files", "appearance.h5,motion.h5",
          "--embed-dim", "128", "--ffn-embed-dim", "256", "--attention-heads", "4", "--dropout", "0.1",
          "--optimizer", "adam", "--lr", "2e-3", "--batch-size", "32", "--num-workers", "0", "--valid-subset", "val",
          "--no-epoch-checkpoints", "--cpu", "--no-progress-bar", "--seed", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nacf")
    generate(str(root / "toy"), ToyConfig(seed=3, n_images=(10, 3, 3), n_videos=(300, 20, 40)), log=lambda s: None)
    data = root / "toy" / "videos"

    def train(*args):
        run_cli([os.path.join(BIN, "fairseq-train"), str(data), *COMMON, *args])

    train("--arch", "nacf_arb", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
          "--max-update", "150", "--save-dir", str(root / "arb"))
    train("--arch", "nacf", "--criterion", "nacf_loss", "--mask-ratio-low", "0", "--mask-ratio-high", "1",
          "--max-update", "300", "--init-from-ar", str(root / "arb" / "checkpoint_best.pt"),
          "--save-dir", str(root / "nacf"))
    return data, root / "arb" / "checkpoint_best.pt", root / "nacf" / "checkpoint_best.pt"


class FakeTask:
    def __init__(self, d):
        self.target_dictionary = d


def test_visual_word_targets_eq6():
    d = make_dictionary("a man is driving car".split())
    crit = NACFLoss(FakeTask(d), 0.8, 0.0, 1.0, 1.0, 0.0, False)
    words = torch.tensor([[d.index("a"), d.index("man"), d.index("is"), d.index("driving"), d.unk(), d.pad()]])
    pos = torch.tensor([[OTHER, NOUN, VERB, VERB, NOUN, OTHER]])
    m = d.index("<mask>")
    # "is" is a verb but a form of "be"; <unk> is never a visual word; padding stays padding
    assert crit.visual_targets(words, pos).tolist() == [[m, d.index("man"), m, d.index("driving"), m, d.pad()]]
    with_be = NACFLoss(FakeTask(d), 0.8, 0.0, 1.0, 1.0, 0.0, True)
    assert with_be.visual_targets(words, pos)[0, 2] == d.index("is")


def test_masking_ratio_bounds_eq4():
    torch.manual_seed(0)
    pad = 1
    lengths = torch.tensor([10] * 500 + [1] * 20)
    words = torch.full((520, 10), 5)
    words[500:, 1:] = pad
    masked = random_mask(words, lengths, 0.35, 0.9, pad)
    n = masked.sum(1)
    # ⌊10·0.35⌋ = 3 .. ⌊10·0.9⌋ = 9 masks, every count in between drawn; one word → one mask
    assert n[:500].min() == 3 and n[:500].max() == 9 and len(set(n[:500].tolist())) == 7
    assert (n[500:] == 1).all() and not masked[500:, 1:].any()


def test_nar_targets_drop_eos():
    target = torch.tensor([[7, 8, 2, 1], [9, 2, 1, 1]])  # eos 2, pad 1
    words, lengths = nar_targets(target, 2, 1)
    assert words.tolist() == [[7, 8], [9, 1]] and lengths.tolist() == [2, 1]


def test_initialised_from_ar_b(trained):
    data, arb, nacf_ckpt = trained
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(data), feature_files="appearance.h5,motion.h5"))
    from fairseq_nar_caption.models.nacf import NACFConfig, NACFModel

    cfg = OmegaConf.structured(NACFConfig(_name="nacf", embed_dim=128, ffn_embed_dim=256, attention_heads=4,
                                          max_source_positions=256, max_target_positions=32, init_from_ar=str(arb)))
    model = task.build_model(cfg)  # a fresh build applies --init-from-ar
    ar = torch.load(arb)["model"]
    own = model.state_dict()
    shared = [k for k in ar if k in own]
    assert any(k.startswith("encoder.embed.0.") for k in shared)
    assert any(k.startswith("decoder.layers.0.encoder_attn") for k in shared)
    assert [k for k in ar if k not in own] == ["decoder.version"]  # every AR-B parameter is used
    for k in shared:
        assert torch.equal(own[k], ar[k]), k
    assert not any(k.startswith("length_predictor") for k in shared)  # NACF's own parts start fresh
    assert isinstance(model, NACFModel)


@pytest.mark.parametrize("generator", ["mp", "ef", "l2r", "ct-mp", "ct-ef", "ct-l2r"])
def test_every_algorithm_decodes_through_fairseq_generate(trained, generator, tmp_path):
    data, arb, ckpt = trained
    out = run_cli([os.path.join(BIN, "fairseq-generate"), str(data), "--user-dir", USER_DIR,
                   "--task", "captioning", "--feature-files", "appearance.h5,motion.h5", "--path", str(ckpt),
                   "--gen-subset", "test", "--generator", generator, "--batch-size", "16", "--cpu"]).stdout
    (tmp_path / "gen.txt").write_text(out)
    res = score.score_files(refs=str(data / "test_refs.json"), generate_output=str(tmp_path / "gen.txt"),
                            metrics=("CIDEr-D",))
    assert res["num_images"] == 40 and res["scores"]["CIDEr-D"] > 0


def test_tiny_nacf_beats_most_frequent_caption(trained):
    data, arb, ckpt = trained
    loaded = inference.load(str(data), ["--path", str(ckpt), "--generator", "ct-mp", "--feature-files",
                                        "appearance.h5,motion.h5", "--cpu"])
    loaded.task.load_dataset("test")
    ds = loaded.task.dataset("test")
    hyps = inference.decode_dataset(loaded, ds, batch_size=16)
    refs = {i: ds.refs[i] for i in hyps}
    mfc = most_frequent_caption(read_manifest(str(data / "train.tsv")))
    ours = coco_scores(refs, hyps, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
    floor = coco_scores(refs, {i: mfc for i in hyps}, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
    assert ours > 2 * floor, (ours, floor)


def test_teacher_rescoring_and_batch_invariance_on_the_trained_model(trained):
    data, arb, ckpt = trained
    args = ["--path", str(ckpt), "--generator", "ct-mp", "--feature-files", "appearance.h5,motion.h5", "--cpu",
            "--length-beam", "3", "--nar-iterations", "2", "--teacher-path", str(arb)]
    loaded, batched, single = decode_batched_and_single(data, args)
    assert loaded.generator.teacher is not None
    assert batched == single
