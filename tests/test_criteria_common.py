"""The pieces the criteria share (``criterions/common.py``): the label-smoothed NLL on a
hand-computed example (both spreads, a restricted vocabulary, padding, sum reduction, and
fairseq's own function), the random-positions sampler against brute-force expectations (counts,
candidates only, uniform over subsets, the random numbers it draws), and every criterion logging
its losses in bits: ``loss`` and ``nll_loss`` (or NACF's ``mlm_nll``) on one scale."""
import itertools
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from fairseq import metrics
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

from conftest import make_dictionary
from fairseq_nar_caption.criterions.common import (LN2, label_smoothed_nll, random_mask, random_positions,
                                                   uniform_ce)
from fairseq_nar_caption.criterions.group_mask import GroupMaskCriterion
from fairseq_nar_caption.criterions.nacf_loss import NACFLoss
from fairseq_nar_caption.criterions.query_ctc import QueryCTCCriterion
from fairseq_nar_caption.criterions.rdt_loss import RDTLossCriterion
from fairseq_nar_caption.models.modules.bits import codebook, num_bits, predict_x0
from fairseq_nar_caption.models.rdt import RDTModel

# ----------------------------------------------------------------------------- label-smoothed NLL

# p = (1/2, 1/4, 1/8, 1/8), target 0: −log p = (1, 2, 3, 3)·ln 2
P = torch.tensor([0.5, 0.25, 0.125, 0.125])


def test_label_smoothed_nll_by_hand():
    lp = P.log().unsqueeze(0)  # one position
    y = torch.tensor([0])
    ln2 = math.log(2)
    # spread "all": (1 − ε)·nll + ε·(1/4)·Σ −log p_v = 0.9·1 + 0.1·9/4 (in ln 2)
    loss, nll = label_smoothed_nll(lp, y, 0.1)
    assert nll.item() == pytest.approx(ln2) and loss.item() == pytest.approx((0.9 + 0.1 * 9 / 4) * ln2)
    assert uniform_ce(lp).item() == pytest.approx(9 / 4 * ln2)
    # spread "others": ε/3 on each of the other three: 0.9·1 + 0.1·(2 + 3 + 3)/3
    loss, _ = label_smoothed_nll(lp, y, 0.1, spread="others")
    assert loss.item() == pytest.approx((0.9 + 0.1 * 8 / 3) * ln2)
    # ε = 0: the NLL
    loss, nll = label_smoothed_nll(lp, y, 0.0)
    assert torch.equal(loss, nll)
    # a restricted vocabulary: p = (1/2, 1/2, 0, 0), uniform over the K = 2 finite classes
    lp2 = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).log()
    assert uniform_ce(lp2, num_classes=2).item() == pytest.approx(ln2)
    loss, nll = label_smoothed_nll(lp2, y, 0.3, num_classes=torch.tensor(2))
    assert loss.item() == pytest.approx(ln2) and nll.item() == pytest.approx(ln2)


def test_label_smoothed_nll_padding_and_sum_reduction():
    lp = torch.stack([P.log(), P.flip(0).log(), P.log()])  # 3 positions, the middle one padding
    y = torch.tensor([1, 0, 1])
    ignore = torch.tensor([False, True, False])
    loss, nll = label_smoothed_nll(lp, y, 0.1, ignore=ignore)
    assert loss[1] == 0 and nll[1] == 0
    assert nll[0].item() == pytest.approx(2 * math.log(2))
    summed = label_smoothed_nll(lp, y, 0.1, ignore=ignore, reduce=True)
    assert summed[0].item() == pytest.approx(2 * loss[0].item()) and summed[1].item() == pytest.approx(4 * math.log(2))
    with pytest.raises(ValueError):
        label_smoothed_nll(lp, y, 0.1, spread="others", num_classes=3)


def test_spread_others_is_fairseqs_label_smoothed_nll_loss():
    torch.manual_seed(0)
    lp = torch.randn(3, 5, 11).log_softmax(-1)
    target = torch.randint(0, 11, (3, 5))
    target[1, 3:] = 1  # padding
    for eps in (0.0, 0.1):
        want = label_smoothed_nll_loss(lp, target, eps, ignore_index=1)
        got = label_smoothed_nll(lp, target, eps, ignore=target.eq(1), reduce=True, spread="others")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ----------------------------------------------------------------------------- random positions

def test_random_positions_counts_candidates_and_uniform_subsets_by_brute_force():
    torch.manual_seed(0)
    cand = torch.tensor([[True, False, True, True, False, True],  # 4 candidates, choose 2: 6 subsets
                         [False, True, True, True, False, False],  # 3 candidates, choose 3
                         [True, True, True, False, False, False]])  # choose 0
    count = torch.tensor([2, 3, 0])
    draws = 3000
    subsets = Counter()
    for _ in range(draws):
        m = random_positions(cand, count)
        assert m.sum(1).tolist() == count.tolist() and not (m & ~cand).any()
        subsets[tuple(m[0].nonzero().view(-1).tolist())] += 1
    # every 2-subset of the row's candidates, each with probability 1/6 (±4 binomial std)
    assert set(subsets) == set(itertools.combinations([0, 2, 3, 5], 2))
    std = math.sqrt(draws * (1 / 6) * (5 / 6))
    assert all(abs(n - draws / 6) < 4 * std for n in subsets.values())


def test_random_positions_draws_one_uniform_per_position():
    cand = torch.ones(3, 7, dtype=torch.bool)
    torch.manual_seed(5)
    random_positions(cand, torch.tensor([1, 2, 3]))
    after = torch.get_rng_state()
    torch.manual_seed(5)
    torch.rand(3, 7)
    assert torch.equal(after, torch.get_rng_state())
    # NACF's masking: one uniform per row (the count), then the positions
    words = torch.full((3, 7), 5)
    torch.manual_seed(5)
    random_mask(words, torch.full((3,), 7), 0.35, 0.9, 1)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    torch.rand(3), torch.rand(3, 7)
    assert torch.equal(after, torch.get_rng_state())


def test_random_mask_counts_are_uniform_and_only_on_words():
    torch.manual_seed(1)
    pad, draws = 1, 4000
    words = torch.full((draws, 6), 5)
    words[:, 4:] = pad  # 4 words: (β_l, β_h) = (0, 1) draws 1..4 masks, each with probability 1/4
    m = random_mask(words, torch.full((draws,), 4), 0.0, 1.0, pad)
    assert not m[:, 4:].any()
    counts = Counter(m.sum(1).tolist())
    std = math.sqrt(draws * 0.25 * 0.75)
    assert set(counts) == {1, 2, 3, 4} and all(abs(n - draws / 4) < 4 * std for n in counts.values())


# ----------------------------------------------------------------------------- losses logged in bits

def reduce(criterion, logs):
    with metrics.aggregate(new_root=True) as agg:
        type(criterion).reduce_metrics(logs)
        return {k: float(v) for k, v in agg.get_smoothed_values().items()}


D = make_dictionary("a man is driving car dog".split())
for _s in ("<blank>",):
    D.add_symbol(_s)


def captions():
    words = [[D.index(w) for w in c.split()] for c in ("a man is driving car", "a dog", "dog")]
    t = torch.full((3, 6), D.pad())
    for i, w in enumerate(words):
        t[i, : len(w) + 1] = torch.tensor(w + [D.eos()])
    return t


def logits_for(tokens, seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(len(D), len(D), generator=g)
    return table[tokens].requires_grad_()


class MLMStub(torch.nn.Module):
    num_updates = 0

    def forward_encoder(self, net_input):
        return {}

    def forward_length(self, encoder_out):
        return torch.full((3, 32), -math.log(32))

    def forward_decoder_nar(self, tokens, encoder_out):
        return logits_for(tokens, 0)


class SAICStub(torch.nn.Module):
    group_size, num_updates = 2, 0
    encoder = SimpleNamespace(reorder_encoder_out=lambda enc, idx: enc)
    decoder = SimpleNamespace(max_positions=lambda: 24)

    def forward_encoder(self, net_input):
        return {}

    def forward_outliner(self, prev, encoder_out, group_size=None):
        return logits_for(prev, 1)

    def forward_filler(self, tokens, encoder_out):
        return logits_for(tokens, 2)


class CTCStub(torch.nn.Module):
    def forward(self, **net_input):
        return logits_for(torch.arange(8).repeat(3, 1), 3), {"padding_mask": None}

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return net_output[0].log_softmax(-1)


class RDTStub(torch.nn.Module):
    fixed_length, sentence_mask, to_bits = RDTModel.fixed_length, RDTModel.sentence_mask, RDTModel.to_bits

    def __init__(self):
        super().__init__()
        self.seq_len, self.n_bits, self.pad, self.eos = 6, num_bits(len(D)), D.pad(), D.eos()
        self.noise_schedule, self.cfg = "cosine", SimpleNamespace(cascaded=False, self_cond_prob=0.0)
        self.register_buffer("book", codebook(len(D), self.n_bits))
        self.word_mask = torch.ones(len(D), dtype=torch.bool)
        self.word_mask[[D.bos(), D.pad()]] = False

    def forward_encoder(self, net_input):
        return {}

    def denoise(self, x_t, gamma, encoder_out, self_cond=None, cascade=None, word_mask=None):
        logits = logits_for(torch.arange(self.seq_len).repeat(x_t.size(0), 1), 4)
        logits = logits.masked_fill(~self.word_mask, -math.inf)
        return logits, predict_x0(logits, self.book)


def test_every_criterion_logs_loss_and_nll_in_bits_on_one_scale():
    """ε = 0 and no other term: the loss is the NLL, so the logged loss equals the logged NLL,
    and both are the summed value / sample size / ln 2."""
    task = SimpleNamespace(target_dictionary=D)
    target = captions()
    torch.manual_seed(0)
    runs = {
        "nacf_loss": (NACFLoss(task, 0.0, 0.35, 0.9, 0.0, 0.0, False), MLMStub(),
                      {"target": target, "length_target": torch.full((3, 32), 1 / 32), "ntokens": 9,
                       "nsentences": 3, "net_input": {}}, "mlm_nll"),
        "group_mask": (GroupMaskCriterion(task, 0, 0.0, 1.0, 0.0), SAICStub(),
                       {"target": target, "net_input": {}}, "nll_loss"),
        "query_ctc": (QueryCTCCriterion(task), CTCStub(), {"target": target, "net_input": {}}, "nll_loss"),
        "rdt_loss": (RDTLossCriterion(SimpleNamespace(), 1.0, 0.0, 0.0, 0.12, 0.15, 0.0, 0.999, "sentence"),
                     RDTStub(), {"target": target, "net_input": {}}, "nll_loss"),
    }
    for name, (crit, model, sample, nll_key) in runs.items():
        model.train()
        loss, sample_size, log = crit(model, sample)
        assert float(log["loss"]) == pytest.approx(float(log[nll_key]), rel=1e-6), name
        got = reduce(crit, [log, log])
        weight = 2 if name == "nacf_loss" else 2 * sample_size  # NACF: a mean per logging output
        want = 2 * float(log["loss"]) / weight / LN2
        assert got["loss"] == pytest.approx(want, abs=2e-3), name
        assert got["loss"] == pytest.approx(got[nll_key], abs=1e-3), name
