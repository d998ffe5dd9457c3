"""Self-critical sequence training (criterions/self_critical.py, criterions/scst.py): the loss by hand
for both baselines, the reward against pycocoevalcap's own per-item CIDEr-D, seeded sampling, each
estimator's log-probability against a brute-force recomputation, CTC samples collapsing to the
captions rewarded, the refusals, and a tiny AR model whose training-split CIDEr-D rises under SCST
through fairseq-train."""
import math
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import BIN, USER_DIR, run_cli, write_h5, write_tsv
from fairseq_nar_caption.criterions.scst import (ARSampling, CTCSampling, MaskedLMSampling, SCSTCriterion,
                                                 without_dropout)
from fairseq_nar_caption.criterions.self_critical import CaptionReward, baselines, policy_loss
from fairseq_nar_caption.errors import DataError, OptionError
from fairseq_nar_caption.generators.ctc import collapse

COLOURS, SHAPES, SIZES = ["red", "blue", "green"], ["circle", "square", "star"], ["small", "big"]


def captions_of(c, s, b):
    return [f"a {SIZES[b]} {COLOURS[c]} {SHAPES[s]}", f"a {COLOURS[c]} {SHAPES[s]}",
            f"the {COLOURS[c]} {SHAPES[s]} is {SIZES[b]}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """120 items: colour, shape and size read off feature dimensions; three reference styles each."""
    root = tmp_path_factory.mktemp("scst_data")
    rng = np.random.default_rng(0)
    feats, caps = {}, {}
    for i in range(120):
        c, s, b = rng.integers(0, 3), rng.integers(0, 3), rng.integers(0, 2)
        x = rng.normal(scale=0.5, size=(5, 8)).astype("float32")
        x[:, c] += 1.5
        x[:, 3 + s] += 1.5
        x[:, 6] += 1.5 * b
        feats[str(i)] = x
        caps[str(i)] = captions_of(c, s, b)
    write_h5(root / "features.h5", feats)
    for split, ids in [("train", range(0, 96)), ("val", range(96, 108)), ("test", range(108, 120))]:
        write_tsv(root / f"{split}.tsv", [(str(i), c) for i in ids for c in caps[str(i)]])
    words = sorted({w for cs in caps.values() for c in cs for w in c.split()})
    (root / "dict.txt").write_text("".join(f"{w} 1\n" for w in words))
    return root, caps


def make_task(root, **cfg):
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

    task = CaptioningTask.setup_task(CaptioningConfig(data=str(root), eval_cider=True, **cfg))
    task.load_dataset("train")
    return task


def make_model(task, config_cls, name, **kw):
    torch.manual_seed(0)
    cfg = OmegaConf.structured(config_cls(_name=name, embed_dim=16, ffn_embed_dim=32, attention_heads=2,
                                          encoder_layers=1, decoder_layers=1, dropout=0.0,
                                          max_source_positions=16, max_target_positions=16, **kw))
    return task.build_model(cfg)


def batch(task, n=6):
    ds = task.dataset("train")
    return ds.collater([ds[i] for i in range(0, 3 * n, 3)])  # n distinct images (three rows each)


# ----------------------------------------------------------------------------- the loss by hand

def test_baselines_and_loss_by_hand():
    # K = 3 samples of B = 2 images
    r = np.array([[0.9, 0.0], [0.3, 0.6], [0.6, 0.3]])
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -1.5], [-2.0, -0.25]], requires_grad=True)
    # mean baseline: the other two samples' mean reward
    mean = baselines(r, "mean")
    np.testing.assert_allclose(mean, [[0.45, 0.45], [0.75, 0.15], [0.6, 0.3]])
    # −(1/3)·[0.45(−1) + (−0.45)(−1) + 0·(−2) + (−0.45)(−2) + 0.45(−1.5) + 0·(−0.25)]
    #  = −(1/3)·(−0.45 + 0.45 + 0.9 − 0.675) = −0.225 / 3
    assert float(policy_loss(logp, r, mean).detach()) == pytest.approx(-0.225 / 3)
    # greedy baseline: rewards 0.5 and 0.2 of the greedy captions
    greedy = baselines(r, "greedy", np.array([0.5, 0.2]))
    np.testing.assert_allclose(greedy, [[0.5, 0.2]] * 3)
    # −(1/3)·[0.4(−1) + (−0.2)(−1) + 0.1(−2) + (−0.2)(−2) + 0.4(−1.5) + 0.1(−0.25)]
    #  = −(1/3)·(−0.4 + 0.2 − 0.2 + 0.4 − 0.6 − 0.025) = 0.625 / 3
    loss = policy_loss(logp, r, greedy)
    assert float(loss.detach()) == pytest.approx(0.625 / 3)
    loss.backward()  # ∂/∂logp_kb = −(r − b)/K
    np.testing.assert_allclose(logp.grad.numpy(), -(r - greedy) / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="at least two samples"):
        baselines(r[:1], "mean")


def test_criterion_loss_equals_the_hand_formula_for_both_baselines(data, monkeypatch):
    """The criterion's forward on a hand-made batch: the rows an estimator returns are rewarded with
    CIDEr-D against the items' training references, and the loss is −(1/K) Σ (R − b)·log p."""
    from fairseq_nar_caption.evaluation.coco_metrics import CorpusCiderD
    from fairseq_nar_caption.models.ar_caption import CaptionModelConfig

    root, caps = data
    task = make_task(root)
    model = make_model(task, CaptionModelConfig, "ar_caption")
    sample = batch(task, 2)
    ids = sample["item_ids"]
    d = task.target_dictionary
    enc = lambda text: torch.tensor([d.index(w) for w in text.split()] + [d.eos()])
    rows = [enc(caps[ids[0]][0]), enc("a red"), enc(caps[ids[1]][2]), enc("the star is")]  # K = 2, sample-major
    greedy_rows = [enc(caps[ids[0]][1]), enc("a blue circle")]
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -0.5]], requires_grad=True)
    monkeypatch.setattr(ARSampling, "draw", lambda self, m, s, k: (rows, logp))
    monkeypatch.setattr(ARSampling, "greedy", lambda self, m, s: greedy_rows)
    train_refs = {}
    for line in (root / "train.tsv").read_text().splitlines()[1:]:
        i, c = line.split("\t")
        train_refs.setdefault(i, []).append(c)
    cider = CorpusCiderD(list(train_refs.values()))
    hyps = [d.string(r[:-1]) for r in rows]
    r = cider.scores(hyps, [train_refs[i] for i in list(ids) * 2]).reshape(2, 2)
    g = cider.scores([d.string(x[:-1]) for x in greedy_rows], [train_refs[i] for i in ids])
    for kind, b in [("mean", np.array([[r[1, 0], r[1, 1]], [r[0, 0], r[0, 1]]])), ("greedy", np.stack([g, g]))]:
        crit = SCSTCriterion(task, 2, kind, "train")
        model.train()
        loss, n, log = crit(model, sample)
        expected = -sum((r[k, j] - b[k, j]) * float(logp[k, j].detach()) for k in range(2) for j in range(2)) / 2
        assert n == 2 and float(loss.detach()) == pytest.approx(expected, rel=1e-6)
        assert log["reward"] == pytest.approx(r.mean(0).sum())
    assert len(set(np.round(r.ravel(), 6))) == 4  # four different rewards: every pairing of R and b is checked


def test_reward_equals_pycocoevalcap_per_item_cider_d(data):
    """With the document frequencies of the scored set itself, the reward of each caption equals
    pycocoevalcap's own per-item CIDEr-D (the scores array of ``Cider().compute_score``)."""
    from pycocoevalcap.cider.cider import Cider

    root, caps = data
    task = make_task(root)
    reward = CaptionReward(task, "val")  # the val split: its references give the document frequencies
    ids = [str(i) for i in range(96, 108)]
    rng = np.random.default_rng(1)
    words = sorted({w for i in ids for c in caps[i] for w in c.split()})
    hyps = [caps[i][0] if k % 3 == 0 else " ".join(rng.choice(words, size=4)) for k, i in enumerate(ids)]
    ours = reward(hyps, ids)
    _, theirs = Cider().compute_score({i: caps[i] for i in ids}, {i: [h] for i, h in zip(ids, hyps)})
    assert ours == pytest.approx(np.asarray(theirs), rel=1e-9, abs=1e-12)
    assert ours.max() > 1.0  # the reference-matching captions score high


def test_reward_refuses_an_item_without_references(data):
    root, _ = data
    reward = CaptionReward(make_task(root), "val")
    with pytest.raises(DataError, match=r"--reward-split val: no references for item 3 "):
        reward(["a red circle"], ["3"])
    with pytest.raises(DataError, match=r"nosuch.tsv: the reward split's manifest"):
        CaptionReward(make_task(root), "nosuch")(["a"], ["1"])


# ----------------------------------------------------------------------------- the estimators

def rewarded(monkeypatch, task, model, sample, k, seed):
    """The captions ``scst`` (K = ``k``, mean baseline) rewards in one training step from ``seed``."""
    seen = []
    real = CaptionReward.__call__
    monkeypatch.setattr(CaptionReward, "__call__", lambda self, c, i: seen.append(list(c)) or real(self, c, i))
    model.train()
    torch.manual_seed(seed)
    SCSTCriterion(task, k, "mean", "train")(model, sample)
    return seen[0]


def test_ar_sampling_is_seeded_and_its_log_prob_is_the_sampled_distribution(data):
    """Same seed, same samples; log p of each sample = Σ_t of the step-by-step distribution
    (a full recompute per prefix, banned symbols and <pad> at −∞, no </s> first, renormalised)."""
    from fairseq_nar_caption.generators.base import banned_symbols
    from fairseq_nar_caption.models.ar_caption import CaptionModelConfig

    root, _ = data
    task = make_task(root, eval_cider_args='{"max_len_b": 6}')
    model = make_model(task, CaptionModelConfig, "ar_caption").eval()
    sample = batch(task, 3)
    est = ARSampling(task)
    torch.manual_seed(5)
    rows, logp = est.draw(model, sample, 4)
    torch.manual_seed(5)
    again, _ = est.draw(model, sample, 4)
    assert [r.tolist() for r in rows] == [r.tolist() for r in again]
    torch.manual_seed(6)
    other, _ = est.draw(model, sample, 4)
    assert [r.tolist() for r in rows] != [r.tolist() for r in other]
    assert logp.shape == (4, 3) and logp.requires_grad
    d = task.target_dictionary
    never = sorted(set(banned_symbols(d)) - {d.eos()} | {d.pad()})
    enc = model.encoder.forward_torchscript(sample["net_input"])
    for k in range(4):
        for b in range(3):
            y = rows[k * 3 + b]
            assert y[-1] == d.eos() and len(y) <= 7  # capped like the validation decode (6 words + </s>)
            total = 0.0
            for t in range(len(y)):
                prev = torch.cat([torch.tensor([d.eos()]), y[:t]]).unsqueeze(0)
                one = model.encoder.reorder_encoder_out(enc, torch.tensor([b]))
                logits = model.decoder(prev, encoder_out=one)[0][0, -1].detach().double()
                logits[never] = -math.inf
                if t == 0:
                    logits[d.eos()] = -math.inf
                total += float(torch.log_softmax(logits, -1)[y[t]])
            assert float(logp[k, b].detach()) == pytest.approx(total, abs=1e-4)


def test_ctc_samples_collapse_to_the_captions_rewarded(data, monkeypatch):
    from fairseq_nar_caption.models.narvl import NARVLFeatureConfig

    root, _ = data
    task = make_task(root, generator="ctc")
    model = make_model(task, NARVLFeatureConfig, "narvl_features", num_queries=8).eval()
    sample = batch(task, 3)
    est = CTCSampling(task)
    torch.manual_seed(2)
    rows, logp = est.draw(model, sample, 5)
    # the same draws by hand: one alignment per position from the ruled distribution
    lprobs, _ = model.forward_decoder(model.forward_encoder(sample["net_input"]))
    lprobs = lprobs.clone()
    lprobs[..., est.never] = -math.inf
    lprobs = torch.log_softmax(lprobs, -1)
    torch.manual_seed(2)
    a = torch.distributions.Categorical(logits=lprobs).sample((5,))  # K x B x N
    blank = task.target_dictionary.index("<blank>")
    assert [r.tolist() for r in rows] == collapse(a.reshape(15, 8), blank)
    assert any(len(r) < 8 for r in rows) and all(blank not in r.tolist() for r in rows)
    by_hand = lprobs.gather(-1, a.permute(1, 0, 2).transpose(1, 2)).sum(1).t()  # K x B
    assert logp.detach() == pytest.approx(by_hand.detach(), abs=1e-5)
    logp.sum().backward()
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)
    # the criterion rewards exactly these collapsed captions
    assert rewarded(monkeypatch, task, model, sample, 5, seed=2) == [
        task.target_dictionary.string(torch.tensor(r)) for r in collapse(a.reshape(15, 8), blank)]


def test_masked_lm_log_prob_is_the_length_and_the_words(data):
    from fairseq_nar_caption.models.nacf import NACFConfig

    root, _ = data
    task = make_task(root, generator="mp")
    model = make_model(task, NACFConfig, "nacf").eval()
    sample = batch(task, 4)
    est = MaskedLMSampling(task)
    torch.manual_seed(3)
    rows, logp = est.draw(model, sample, 3)
    enc = model.forward_encoder(sample["net_input"])
    length = model.forward_length(enc).float()[:, 1:].log_softmax(-1)  # lengths ≥ 1
    d = task.target_dictionary
    for k in range(3):
        for b in range(4):
            y = rows[k * 4 + b]
            assert len(y) >= 1 and d.eos() not in y.tolist() and d.index("<mask>") not in y.tolist()
            one = model.encoder.reorder_encoder_out(enc, torch.tensor([b]))
            words = model.forward_decoder_nar(torch.full((1, len(y)), d.index("<mask>")), one)[0].double()
            words[:, est.never] = -math.inf
            expected = float(length[b, len(y) - 1]) + float(words.log_softmax(-1).gather(1, y.view(-1, 1)).sum())
            assert float(logp[k, b]) == pytest.approx(expected, abs=1e-4)
    greedy = est.greedy(model, sample)
    assert [len(g) for g in greedy] == (length.argmax(-1) + 1).tolist()
    logp.sum().backward()  # the gradient reaches the length predictor and the decoder
    assert model.length_predictor.out.weight.grad.abs().sum() > 0


def test_dag_samples_are_paths_and_their_log_prob_is_the_path_and_its_tokens(data):
    from fairseq_nar_caption.criterions.scst import DAGSampling
    from fairseq_nar_caption.models.dag import DAGConfig

    root, _ = data
    task = make_task(root, generator="dag")
    model = make_model(task, DAGConfig, "dag_caption", graph_size=6).eval()
    sample = batch(task, 3)
    est = DAGSampling(task)
    token_lp, link_lp = est._pass(model, sample)
    n = link_lp.size(1)
    torch.manual_seed(4)
    words, visited, logp = est.sample(token_lp, link_lp, 8)
    paths = set()
    for r in range(24):
        b = r % 3
        path = visited[r].nonzero().view(-1).tolist()
        assert path[0] == 0 and path[-1] == n - 1
        paths.add(tuple(path))
        expected = sum(float(link_lp[b, u, v]) for u, v in zip(path, path[1:]))
        expected += sum(float(token_lp[b, v, words[r, v]]) for v in path[:-1])
        assert float(logp[r].detach()) == pytest.approx(expected, abs=1e-4)
    assert len(paths) > 1  # the paths are drawn, not fixed
    logp.sum().backward(retain_graph=True)  # through the transitions and the tokens
    torch.manual_seed(4)
    rows, lp = est.draw(model, sample, 8)
    assert [r.tolist() for r in rows] == [words[r][visited[r][:-1]].tolist() for r in range(24)]
    # greedy = the dag generator's greedy decode
    task = make_task(root, generator="dag", dag_decode="greedy")
    gen = task.build_generator([model], task.eval_generation_args())
    expected = [h[0]["tokens"][:-1].tolist() for h in gen.generate([model], sample)]
    assert [g.tolist() for g in est.greedy(model, sample)] == expected


def test_outline_fill_samples_are_outlines_filled_and_their_log_prob_is_eq10s_two_terms(data, monkeypatch):
    """SAIC (k = 2): every draw is a sampled outline at the heads and sampled words at the Filler's
    slots; log p = Σ of the Outliner's step-by-step distribution over the heads (a full recompute per
    prefix, banned symbols and <pad> at −∞, no </s> first) + Σ of the Filler's log-probabilities over
    every slot (banned symbols at −∞, </s> allowed), row by row; the caption rewarded is the filled
    sequence up to its first </s>; same seed, same draws; greedy = outline-fill (1, 1)."""
    from fairseq_nar_caption.criterions.scst import OutlineFillSampling
    from fairseq_nar_caption.models.saic import SAICConfig

    root, _ = data
    task = make_task(root, generator="outline-fill", eval_cider_args='{"max_len_b": 7}')
    model = make_model(task, SAICConfig, "saic", group_size=2).eval()
    sample = batch(task, 3)
    est = OutlineFillSampling(task)
    d = task.target_dictionary
    torch.manual_seed(7)
    heads, filled, logp = est.sample(model, sample, 4)
    torch.manual_seed(7)
    rows, lp = est.draw(model, sample, 4)
    assert lp.shape == (4, 3) and lp.requires_grad
    assert lp.detach().view(-1).tolist() == pytest.approx(logp.detach().tolist(), abs=1e-5)
    torch.manual_seed(8)
    other, _ = est.draw(model, sample, 4)
    assert [r.tolist() for r in rows] != [r.tolist() for r in other]
    never_out = sorted(set(est.banned) - {d.eos()} | {d.pad()})
    enc = model.forward_encoder(sample["net_input"])
    lengths = set()
    for r in range(12):
        b = r % 3
        h = heads[r][heads[r].ne(d.pad())]
        f = filled[r][filled[r].ne(d.pad())]
        assert h[-1] == d.eos() and d.eos() not in h[:-1].tolist() and len(h) <= 5  # ⌈7 / 2⌉ words + </s>
        assert len(f) == (len(h) - 1) * 2 + 1 and f[::2].tolist() == h.tolist()  # the outline at the heads
        one = model.encoder.reorder_encoder_out(enc, torch.tensor([b]))
        expected = 0.0
        for i in range(len(h)):
            prev = torch.cat([torch.tensor([d.eos()]), h[:i]]).unsqueeze(0)
            logits = model.forward_outliner(prev, one)[0, -1].detach().double()
            logits[never_out] = -math.inf
            if i == 0:
                logits[d.eos()] = -math.inf
            expected += float(torch.log_softmax(logits, -1)[h[i]])
        masked = f.clone()
        masked[1::2] = d.index("<mask>")  # the Filler's input: the outline, <mask> at its slots
        fill = model.forward_filler(masked.unsqueeze(0), one)[0].detach().double()
        fill[:, est.banned] = -math.inf
        fill = torch.log_softmax(fill, -1)
        expected += sum(float(fill[p, f[p]]) for p in range(1, len(f), 2))
        assert float(logp[r].detach()) == pytest.approx(expected, abs=1e-4)
        first = f.tolist().index(d.eos())
        assert rows[r].tolist() == f[:first].tolist()
        assert not set(rows[r].tolist()) & set(est.banned)
        lengths.add(len(rows[r]))
    assert len(lengths) > 1  # the captions' lengths are drawn, not fixed
    logp.sum().backward()  # through the Outliner and the Filler (one decoder) and the encoder
    assert model.decoder.output_projection.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    # greedy = the outline-fill generator with M_out = M_fill = 1
    gen = make_task(root, generator="outline-fill", outline_beam=1, fill_beam=1, eval_cider_args='{"max_len_b": 7}')
    gen = gen.build_generator([model], gen.eval_generation_args())
    expected = [h[0]["tokens"].tolist() for h in gen.generate([model], sample)]
    assert [g.tolist() for g in est.greedy(model, sample)] == expected
    # the criterion rewards exactly these captions
    assert rewarded(monkeypatch, task, model, sample, 4, seed=7) == [d.string(r) for r in rows]


def test_scst_refusals_name_the_fix(data):
    from fairseq_nar_caption.models.rdt import RDTConfig

    root, _ = data
    task = make_task(root)
    with pytest.raises(OptionError, match="--scst-baseline mean .* --num-samples must be >= 2"):
        SCSTCriterion(task, 1, "mean", "train")
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

    no_eval = CaptioningTask.setup_task(CaptioningConfig(data=str(root)))
    with pytest.raises(DataError, match="scst validates by decoding: set --eval-cider"):
        SCSTCriterion(no_eval, 5, "mean", "train")
    rdt = make_model(make_task(root, generator="diffusion"), RDTConfig, "rdt", seq_len=8)
    crit = SCSTCriterion(task, 2, "mean", "train")
    with pytest.raises(OptionError, match=r"no sampler for RDTModel \(rdt\); it trains ar_caption, dag_caption.*"
                                          r"saic \(RDT: --criterion rdt_scst\)"):
        crit(rdt.train(), batch(task, 2))


def test_validation_decode_reads_a_loaded_splits_references_once(data, monkeypatch):
    """``--eval-cider`` finds each batch's split among the loaded ones: the split's references are
    read once per loaded dataset (again after a reload), not once per batch."""
    from fairseq_nar_caption.models.ar_caption import CaptionModelConfig

    root, _ = data
    task = make_task(root, eval_cider_args='{"beam": 1, "max_len_b": 6}')
    task.load_dataset("val")
    model = make_model(task, CaptionModelConfig, "ar_caption").eval()
    calls = []
    real = type(task).split_references
    monkeypatch.setattr(type(task), "split_references", lambda self, ds: calls.append(ds) or real(self, ds))

    def decode_all():
        ds = task.dataset("val")
        n = 0
        for i in range(0, len(ds), 5):
            out = task.decode_cider(ds.collater([ds[j] for j in range(i, min(i + 5, len(ds)))]), model)
            n += out["_cider_n"]
        return ds, n

    ds, n = decode_all()
    assert n == len(ds) > 5 and calls == [ds]
    task.load_dataset("val")
    again, _ = decode_all()
    assert again is not ds and calls == [ds, again]


def test_without_dropout_restores_the_mode(data):
    from fairseq_nar_caption.models.ar_caption import CaptionModelConfig

    model = make_model(make_task(data[0]), CaptionModelConfig, "ar_caption").train()
    with without_dropout(model):
        assert not model.training
    assert model.training


# ----------------------------------------------------------------------------- through fairseq-train

def test_scst_raises_a_tiny_ar_models_training_cider(data, tmp_path):
    """A tiny AR model after four XE epochs, then 96 SCST updates: its greedy captions of the training
    images score higher CIDEr-D (training-split document frequencies) than before."""
    from fairseq_nar_caption import inference

    root, _ = data
    common = [os.path.join(BIN, "fairseq-train"), str(root), "--user-dir", USER_DIR, "--task", "captioning",
              "--arch", "ar_caption_tiny", "--embed-dim", "32", "--ffn-embed-dim", "64", "--encoder-layers", "1",
              "--decoder-layers", "1", "--dropout", "0.0", "--attention-dropout", "0.0", "--optimizer", "adam",
              "--batch-size", "24", "--num-workers", "0", "--valid-subset", "val", "--no-epoch-checkpoints",
              "--seed", "1", "--cpu", "--no-progress-bar", "--log-format", "simple", "--log-interval", "5"]
    xe = tmp_path / "xe"
    run_cli(common + ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--lr", "3e-3",
                      "--max-epoch", "4", "--save-dir", str(xe)])
    sc = tmp_path / "scst"
    out = run_cli(common + ["--criterion", "scst", "--num-samples", "4", "--scst-baseline", "mean", "--lr", "2e-4",
                            "--finetune-from-model", str(xe / "checkpoint_last.pt"), "--max-update", "96",
                            "--eval-cider", "--eval-cider-args", '{"beam": 1, "max_len_b": 8}',
                            "--best-checkpoint-metric", "cider", "--maximize-best-checkpoint-metric",
                            "--save-dir", str(sc)])
    assert "reward" in out.stdout + out.stderr

    def train_cider(ckpt):
        loaded = inference.load(str(root), ["--task", "captioning", "--path", str(ckpt), "--beam", "1",
                                            "--max-len-b", "8", "--cpu"])
        loaded.task.load_dataset("train")  # the training images, each decoded once
        ds = loaded.task.dataset("train")
        reward = CaptionReward(loaded.task, "train")
        seen, hyps = [], {}
        for i in range(len(ds)):
            item = ds[i]["item_id"]
            if item not in hyps:
                seen.append(i)
                hyps[item] = None
        texts = [loaded.task.caption_strings(loaded.generator, loaded.models, ds.collater([ds[i]]))[0] for i in seen]
        return float(reward(texts, [ds[i]["item_id"] for i in seen]).mean())

    before, after = train_cider(xe / "checkpoint_last.pt"), train_cider(sc / "checkpoint_last.pt")
    assert after > before + 0.3, (before, after)
