"""RDT (Wan et al.) pieces, hand-worked: analog bits, the forward process (Eq. 1), one
reverse step and the whole sampler (Eq. 3-7, Algorithm 1) on a stub, ranking attention
(Eq. 15-23), the ranking loss and its masks (Eq. 24-28), guided SCST's CIDEr-D, and the
retrieval step (no leakage, top-1 at test, sampling among the top-k in training)."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fairseq.data import Dictionary

from fairseq_nar_caption.cli import retrieve
from fairseq_nar_caption.data import ranking
from fairseq_nar_caption.criterions.rdt_loss import ranking_loss, sentence_quality
from fairseq_nar_caption.evaluation.coco_metrics import CorpusCiderD
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.generators import build_caption_generator
from fairseq_nar_caption.generators.diffusion import ddim_step, item_normal, reverse_step
from fairseq_nar_caption.models.modules.bits import (bits_to_ids, codebook, ids_to_bits, num_bits, predict_x0,
                                                     threshold_ids)
from fairseq_nar_caption.models.modules.ranking_attention import (MultiheadRankingAttention, RankingEncoderLayer,
                                                                  ranked_attention,
                                                                  ranked_set_sizes)
from fairseq_nar_caption.errors import GeneratorError
from fairseq_nar_caption.models.rdt import RDTModel, alpha_sigma, forward_noise, log_snr_gamma


# ----------------------------------------------------------------------------- bits

@pytest.mark.parametrize("vocab", [1, 2, 5, 96, 128, 10200])
def test_bits_round_trip_for_every_word_id(vocab):
    n = num_bits(vocab)
    assert n == max(1, math.ceil(math.log2(vocab)))
    ids = torch.arange(vocab)
    bits = ids_to_bits(ids, n, scale=0.7)
    assert bits.shape == (vocab, n) and bits.abs().allclose(torch.tensor(0.7))
    book = codebook(vocab, n, 0.7)
    assert torch.equal(bits_to_ids(bits, book), ids)
    ints, valid = threshold_ids(bits, vocab)
    assert torch.equal(ints, ids) and valid.all()


def test_bits_are_msb_first_and_invalid_codes_go_to_the_nearest_valid_word():
    assert ids_to_bits(torch.tensor([6]), 3).tolist() == [[1.0, 1.0, -1.0]]
    book = codebook(5, 3)  # words 0..4; codes 5, 6, 7 name no word
    bits = torch.tensor([[0.5, 0.9, 0.8]])  # thresholds to 7 (invalid): a clamp would say 4
    ints, valid = threshold_ids(bits, 5)
    assert ints.tolist() == [7] and not valid.any()
    # inner products: 3 (-++) = 1.2 is the largest among valid codes
    assert bits_to_ids(bits, book).tolist() == [3]
    allowed = torch.tensor([True, True, True, False, True])  # 3 not allowed → 2 (-+-) = -0.4
    assert bits_to_ids(bits, book, allowed).tolist() == [2]


def test_x0_prediction_is_a_convex_combination_of_word_codes():
    book = codebook(5, 3)
    logits = torch.tensor([[[0.0, 50.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]])
    x0 = predict_x0(logits, book)
    assert torch.allclose(x0[0, 0], book[1], atol=1e-6)
    assert torch.allclose(x0[0, 1], book.mean(0), atol=1e-6)


# ----------------------------------------------------------------------------- forward process (Eq. 1)

def cosine_gamma_by_hand(t):
    c = math.cos((t + 0.008) / 1.008 * math.pi / 2)
    return math.log(c ** -2 - 1)


def test_noise_schedules_by_hand_and_variance_preserving():
    for t in (0.0, 0.1, 0.5, 0.9, 0.999):
        assert float(log_snr_gamma(torch.tensor(t, dtype=torch.float64))) == pytest.approx(cosine_gamma_by_hand(t),
                                                                                             rel=1e-6, abs=1e-6)
        lin = math.log(math.expm1(1e-4 + 10 * t * t))
        assert float(log_snr_gamma(torch.tensor(t, dtype=torch.float64), "linear")) == pytest.approx(lin, rel=1e-6)
    t = torch.linspace(0, 0.999, 50)
    for schedule in ("cosine", "linear"):
        g = log_snr_gamma(t, schedule)
        assert (g[1:] > g[:-1]).all()  # γ increases: more noise later
        a, s = alpha_sigma(g)
        assert torch.allclose(a ** 2 + s ** 2, torch.ones_like(a), atol=1e-6)


def test_forward_noising_matches_eq1_in_distribution():
    torch.manual_seed(0)
    n = 40000
    x0 = ids_to_bits(torch.tensor([5, 2]), 3).view(1, 2, 3).expand(n, 2, 3)
    for t in (0.05, 0.3, 0.7, 0.95):
        x_t, gamma = forward_noise(x0, torch.full((n,), t), "cosine")
        g = cosine_gamma_by_hand(t)
        alpha, sigma = math.sqrt(1 / (1 + math.exp(g))), math.sqrt(1 / (1 + math.exp(-g)))  # sqrt σ(−γ), sqrt σ(γ)
        assert float(gamma[0]) == pytest.approx(g, rel=1e-5)
        mean, std = x_t.mean(0), x_t.std(0)
        assert torch.allclose(mean, alpha * x0[0], atol=5 * sigma / math.sqrt(n))
        assert torch.allclose(std, torch.full_like(std, sigma), rtol=0.03)
        # standardised residuals are N(0, 1): about 68.3% within one sigma
        z = (x_t - alpha * x0) / sigma
        assert float((z.abs() < 1).float().mean()) == pytest.approx(0.6827, abs=0.01)


# ----------------------------------------------------------------------------- reverse process (Eq. 3-7)

def test_one_reverse_step_equals_eq3_to_7_by_hand():
    x_t = torch.tensor([[[0.3, -1.2], [0.8, 0.1]]])
    x0_hat = torch.tensor([[[1.0, -1.0], [0.2, 0.6]]])
    model = SimpleNamespace(gamma=lambda t: log_snr_gamma(t, "cosine"))
    t, s = 0.6, 0.4
    g_t, g_s = cosine_gamma_by_hand(t), cosine_gamma_by_hand(s)
    alpha_t = math.sqrt(1 / (1 + math.exp(g_t)))
    alpha_s = math.sqrt(1 / (1 + math.exp(g_s)))
    mu_s = math.sqrt(1 / (1 + math.exp(-g_s)))
    c = -math.expm1(g_s - g_t)
    expected = alpha_s * (x_t * (1 - c) / alpha_t + c * x0_hat)  # Eq. 5
    assert torch.allclose(reverse_step(model, x_t, t, s, x0_hat), expected, atol=1e-5)
    eps = torch.tensor([[[0.5, -0.25], [1.0, 2.0]]])
    noisy = expected + math.sqrt(mu_s ** 2 * c) * eps  # Eq. 6-7
    assert torch.allclose(reverse_step(model, x_t, t, s, x0_hat, eps), noisy, atol=1e-5)


class StubRDT:
    """f(x_t, γ, G) that records its inputs and predicts a fixed caption's codes."""

    def __init__(self, words, vocab=8, eos=2, seq_len=4):
        self.seq_len, self.n_bits, self.bit_scale, self.eos = seq_len, num_bits(vocab), 1.0, eos
        self.book = codebook(vocab, self.n_bits)
        self.word_mask = torch.ones(vocab, dtype=torch.bool)
        self.word_mask[1] = False  # <pad>
        self.cfg = SimpleNamespace(cascaded=False)
        self.words = torch.tensor(words)
        self.calls = []

    def gamma(self, t):
        return log_snr_gamma(t, "cosine")

    def forward_encoder(self, net_input):
        return {"encoder_out": [torch.zeros(3, net_input["features"].size(0), 2)]}

    def denoise(self, x_t, gamma, encoder_out, self_cond=None, cascade_bits=None, word_mask=None):
        self.calls.append((x_t.clone(), gamma.clone(), None if self_cond is None else self_cond.clone()))
        logits = torch.full((x_t.size(0), self.seq_len, len(self.book)), -5.0)
        logits.scatter_(-1, self.words.view(1, -1, 1).expand(x_t.size(0), -1, 1), 5.0)
        if word_mask is not None:
            logits = logits.masked_fill(~word_mask, -math.inf)
        return logits, predict_x0(logits, self.book)


def test_sampler_runs_algorithm1_with_time_difference_and_cuts_at_the_first_eos():
    stub = StubRDT([5, 6, 2, 7])
    d = Dictionary()  # <s> <pad> </s> <unk> + 4 words = the stub's 8 codes
    for w in ("w4", "w5", "w6", "w7"):
        d.add_symbol(w)
    cfg = SimpleNamespace(diffusion_steps=3, time_difference=1.0, cascade_steps=0, cascade_time_difference=0.0,
                          diffusion_noise=False, diffusion_seed=7, diffusion_max_time=1.0)  # the reference's t' = 1
    gen = build_caption_generator("diffusion", [stub], d, cfg)
    sample = {"id": torch.tensor([4, 9]), "net_input": {"features": torch.zeros(2, 3, 2)}}
    hyps = gen.generate([stub], sample)
    # by hand: x_T per item from seed + id; steps t = 3/3, 2/3, 1/3 → s = max(t−1−Δ, 0)/T = 1/3, 0, 0
    x = item_normal(sample["id"], (4, 3), 7, "cpu")
    assert torch.equal(stub.calls[0][0], x) and stub.calls[0][2] is None  # no self-condition at the first step
    x0_hat = predict_x0(stub.denoise(x, torch.zeros(2), None, word_mask=gen.word_mask)[0], stub.book)  # the vocabulary rule
    stub.calls.pop()
    for k, (t, s) in enumerate([(1.0, 1 / 3), (2 / 3, 0.0), (1 / 3, 0.0)]):
        assert torch.allclose(stub.calls[k][0], x, atol=1e-5)
        assert torch.allclose(stub.calls[k][1], log_snr_gamma(torch.full((2,), t)))
        if k:
            assert torch.allclose(stub.calls[k][2], x0_hat)  # self-conditioning on the previous x̂0
        g_t, g_s = cosine_gamma_by_hand(t), cosine_gamma_by_hand(s)
        c = -math.expm1(g_s - g_t)
        x = math.sqrt(1 / (1 + math.exp(g_s))) * (x * (1 - c) / math.sqrt(1 / (1 + math.exp(g_t))) + c * x0_hat)
    assert len(stub.calls) == 3
    for h in hyps:
        assert h[0]["tokens"].tolist() == [5, 6, 2]  # cut at the first </s>, which is kept
    # an item's caption does not depend on its batch: x_T of item 9 alone is the same draw
    assert torch.equal(item_normal(torch.tensor([9]), (4, 3), 7, "cpu")[0], item_normal(sample["id"], (4, 3), 7,
                                                                                         "cpu")[1])



# ----------------------------------------------------------------------------- issue #12: sampler options

def stub_dictionary():
    d = Dictionary()  # <s> <pad> </s> <unk> + 4 words = the stub's 8 codes
    for w in ("w4", "w5", "w6", "w7"):
        d.add_symbol(w)
    return d


def diffusion_cfg(**kw):
    base = dict(diffusion_steps=2, time_difference=0.0, cascade_steps=0, cascade_time_difference=0.0,
                diffusion_noise=False, diffusion_seed=7)
    return SimpleNamespace(**{**base, **kw})


def test_sampler_starts_within_the_training_range_of_t_by_default():
    # training draws t' ~ U(0, 0.999): γ(0.999) = 12.9, but the reference's first step has γ(1) = 33.9
    assert float(log_snr_gamma(torch.tensor(0.999))) == pytest.approx(12.93, abs=0.01)
    assert float(log_snr_gamma(torch.tensor(1.0))) > 30
    sample = {"id": torch.tensor([0]), "net_input": {"features": torch.zeros(1, 3, 2)}}
    for max_time, first_t in ((None, 0.999), (1.0, 1.0), (0.7, 0.7)):
        stub = StubRDT([5, 6, 2, 7])
        cfg = diffusion_cfg() if max_time is None else diffusion_cfg(diffusion_max_time=max_time)
        build_caption_generator("diffusion", [stub], stub_dictionary(), cfg).generate([stub], sample)
        # T = 2: t' = min(1, max), then min(1/2, max)
        assert torch.allclose(stub.calls[0][1], log_snr_gamma(torch.tensor([first_t])))
        assert torch.allclose(stub.calls[1][1], log_snr_gamma(torch.tensor([min(0.5, first_t)])))
    with pytest.raises(GeneratorError, match="diffusion-max-time"):
        build_caption_generator("diffusion", [StubRDT([5])], stub_dictionary(), diffusion_cfg(diffusion_max_time=0))


def test_start_time_edits_the_retrieved_sentence_from_its_bits_noised_to_tau():
    stub = StubRDT([5, 6, 2, 7])
    stub.noise_schedule, stub.pad = "cosine", 1
    stub.fill_slots = lambda tokens: RDTModel.fill_slots(stub, tokens)
    stub.to_bits = lambda tokens: stub.book[tokens]
    retrieved = torch.tensor([[4, 5, 2]])  # w4 w5 </s>
    stub.forward_encoder = lambda net_input: {"encoder_out": [torch.zeros(3, 1, 2)], "retrieved_tokens": [retrieved]}
    sample = {"id": torch.tensor([3]), "net_input": {"features": torch.zeros(1, 3, 2)}}
    build_caption_generator("diffusion", [stub], stub_dictionary(), diffusion_cfg(diffusion_start_time=0.5)) \
        .generate([stub], sample)
    # T = 2 steps over [0, τ]: t' = 0.5, then 0.25
    assert torch.allclose(stub.calls[0][1], log_snr_gamma(torch.tensor([0.5])))
    assert torch.allclose(stub.calls[1][1], log_snr_gamma(torch.tensor([0.25])))
    # x_τ = Eq. 1 at t' = τ from the sentence's L slots (w4 w5 </s> </s>), the item's x_T draw as ε
    eps = item_normal([3], (stub.seq_len, stub.n_bits), 7, "cpu")
    x0 = stub.book[torch.tensor([[4, 5, 2, 2]])]
    a, s = alpha_sigma(log_snr_gamma(torch.tensor(0.5)))
    assert torch.allclose(stub.calls[0][0], a * x0 + s * eps)
    stub.cfg.no_retrieval = True
    with pytest.raises(GeneratorError, match="no-retrieval"):
        build_caption_generator("diffusion", [stub], stub_dictionary(), diffusion_cfg(diffusion_start_time=0.5))
    with pytest.raises(GeneratorError, match="diffusion-start-time"):
        build_caption_generator("diffusion", [StubRDT([5])], stub_dictionary(), diffusion_cfg(diffusion_start_time=0))


def test_ddim_step_by_hand_and_it_keeps_the_noise_that_eq5_erases():
    model = SimpleNamespace(gamma=lambda t: log_snr_gamma(t, "cosine"))
    x0 = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]])
    eps = torch.tensor([[[0.5, -2.0], [1.5, 0.25]]])
    t, s = 0.999, 0.9
    g_t, g_s = cosine_gamma_by_hand(t), cosine_gamma_by_hand(s)
    a_t, sig_t = math.sqrt(1 / (1 + math.exp(g_t))), math.sqrt(1 / (1 + math.exp(-g_t)))
    a_s, sig_s = math.sqrt(1 / (1 + math.exp(g_s))), math.sqrt(1 / (1 + math.exp(-g_s)))
    x_t = a_t * x0 + sig_t * eps  # Eq. 1
    # with the right x̂0, DDIM lands exactly on Eq. 1 at s with the same ε (noise level σ_s = 0.988)
    assert torch.allclose(ddim_step(model, x_t, t, s, x0), a_s * x0 + sig_s * eps, atol=1e-4)
    x0_hat = torch.tensor([[[0.2, -0.6], [0.0, 0.8]]])
    by_hand = a_s * x0_hat + sig_s * (x_t - a_t * x0_hat) / sig_t
    assert torch.allclose(ddim_step(model, x_t, t, s, x0_hat), by_hand, atol=1e-4)
    # Eq. 5 (the posterior mean, no noise) keeps almost nothing of ε at the first step: x_s ≈ α_s·x̂0
    mean = reverse_step(model, x_t, t, s, x0)
    assert (mean - a_s * x0).abs().max() < 0.05 and sig_s > 0.98


def test_sampler_ddim_option_uses_ddim_steps():
    stub = StubRDT([5, 6, 2, 7])
    sample = {"id": torch.tensor([3]), "net_input": {"features": torch.zeros(1, 3, 2)}}
    gen = build_caption_generator("diffusion", [stub], stub_dictionary(), diffusion_cfg(diffusion_sampler="ddim"))
    gen.generate([stub], sample)
    x_T = item_normal(sample["id"], (4, 3), 7, "cpu")
    x0_hat = predict_x0(stub.denoise(x_T, torch.zeros(1), None, word_mask=gen.word_mask)[0], stub.book)
    assert torch.allclose(stub.calls[1][0], ddim_step(stub, x_T, 0.999, 0.5, x0_hat), atol=1e-5)
    with pytest.raises(GeneratorError, match="ddim is deterministic"):
        build_caption_generator("diffusion", [stub], stub_dictionary(),
                                diffusion_cfg(diffusion_sampler="ddim", diffusion_noise=True))


class MixtureStubRDT(StubRDT):
    """Slot 0: p(w4) = 0.4, p(w7) = 0.3, p(w6) = 0.3; slot 1: </s>."""

    def denoise(self, x_t, gamma, encoder_out, self_cond=None, cascade_bits=None, word_mask=None):
        self.calls.append((x_t.clone(), gamma.clone(), None))
        logits = torch.full((x_t.size(0), self.seq_len, len(self.book)), -math.inf)
        logits[:, 0, [4, 7, 6]] = torch.tensor([0.4, 0.3, 0.3]).log()
        logits[:, 1:, 2] = 0.0
        return logits, predict_x0(logits, self.book)


def test_argmax_words_take_the_most_probable_word_where_the_nearest_code_of_the_mixture_does_not():
    # x̂0 of slot 0 = 0.4·(+1,−1,−1) + 0.3·(+1,+1,+1) + 0.3·(+1,+1,−1) = (1, 0.2, −0.4): nearest code 110 = w6
    stub = MixtureStubRDT([4, 2], seq_len=2)
    sample = {"id": torch.tensor([0]), "net_input": {"features": torch.zeros(1, 3, 2)}}
    nearest = build_caption_generator("diffusion", [stub], stub_dictionary(), diffusion_cfg()).generate([stub], sample)
    argmax = build_caption_generator("diffusion", [stub], stub_dictionary(),
                                     diffusion_cfg(diffusion_words="argmax")).generate([stub], sample)
    assert nearest[0][0]["tokens"].tolist() == [6, 2]
    assert argmax[0][0]["tokens"].tolist() == [4, 2]


class NoEosStubRDT(StubRDT):
    """Words w4 w5 w6 w7 in the 4 slots, never </s> first; p(</s>) is highest in slot 2 (0-based)."""

    def denoise(self, x_t, gamma, encoder_out, self_cond=None, cascade_bits=None, word_mask=None):
        self.calls.append((x_t.clone(), gamma.clone(), None))
        logits = torch.full((x_t.size(0), self.seq_len, len(self.book)), -math.inf)
        for slot, (w, eos) in enumerate([(4, -3.0), (5, -2.0), (6, -0.5), (7, -1.0)]):
            logits[:, slot, w], logits[:, slot, 2] = 0.0, eos
        return logits, predict_x0(logits, self.book)


def test_eos_fallback_cuts_a_caption_without_eos_where_eos_is_most_probable():
    stub = NoEosStubRDT([4, 5, 6, 7])
    sample = {"id": torch.tensor([0]), "net_input": {"features": torch.zeros(1, 3, 2)}}
    kept = build_caption_generator("diffusion", [stub], stub_dictionary(), diffusion_cfg()).generate([stub], sample)
    cut = build_caption_generator("diffusion", [stub], stub_dictionary(),
                                  diffusion_cfg(diffusion_eos_fallback=True)).generate([stub], sample)
    assert kept[0][0]["tokens"].tolist() == [4, 5, 6, 7, 2]  # the reference: all L slots, </s> appended
    assert cut[0][0]["tokens"].tolist() == [4, 5, 2]  # </s> where p(</s>) is highest (slot 2)
    # a row that has a </s> is untouched by the fallback
    stub2 = StubRDT([5, 2, 6, 7])
    got = build_caption_generator("diffusion", [stub2], stub_dictionary(),
                                  diffusion_cfg(diffusion_eos_fallback=True)).generate([stub2], sample)
    assert got[0][0]["tokens"].tolist() == [5, 2]


# ----------------------------------------------------------------------------- issue #12: loss slots

class LossStubRDT(torch.nn.Module):
    """What rdt_loss calls, with the logits as a leaf tensor (their gradient shows which slots train)."""

    def __init__(self, vocab=8, seq_len=5):
        super().__init__()
        self.seq_len, self.n_bits, self.pad, self.eos = seq_len, num_bits(vocab), 1, 2
        self.noise_schedule = "cosine"
        self.cfg = SimpleNamespace(cascaded=False, self_cond_prob=0.0)
        self.register_buffer("book", codebook(vocab, self.n_bits))
        self.word_mask = torch.ones(vocab, dtype=torch.bool)
        self.word_mask[[0, 1]] = False
        self.logits = torch.zeros(2, seq_len, vocab, requires_grad=True)

    fixed_length = RDTModel.fixed_length
    sentence_mask = RDTModel.sentence_mask
    to_bits = RDTModel.to_bits

    def denoise(self, x_t, gamma, encoder_out, self_cond=None, cascade=None, word_mask=None):
        logits = self.logits.masked_fill(~self.word_mask, -math.inf)
        return logits, predict_x0(logits, self.book)

    def forward_encoder(self, net_input):
        return {}


def test_loss_slots_all_trains_the_eos_slots_after_the_caption_and_sentence_does_not():
    from fairseq_nar_caption.criterions.rdt_loss import RDTLossCriterion

    sample = {"target": torch.tensor([[4, 5, 2, 1], [6, 2, 1, 1]]), "net_input": {}}  # words, </s>, <pad>
    grads = {}
    for slots in ("sentence", "all"):
        model = LossStubRDT()
        crit = RDTLossCriterion(SimpleNamespace(), 1.0, 1.0, 0.0, 0.12, 0.15, 0.1, 0.999, slots)
        loss, _, _ = crit(model, sample)
        loss.backward()
        grads[slots] = model.logits.grad.abs().sum(-1)  # B x L
    # the fixed-length targets are [4 5 </s> </s> </s>] and [6 </s> </s> </s> </s>]
    assert (grads["sentence"][0, 3:] == 0).all() and (grads["sentence"][1, 2:] == 0).all()
    assert (grads["sentence"][0, :3] > 0).all() and (grads["sentence"][1, :2] > 0).all()
    assert (grads["all"] > 0).all()  # every slot after the first </s> learns </s>


# ----------------------------------------------------------------------------- ranking attention (Eq. 15-23)

def test_ranked_set_sizes():
    assert ranked_set_sizes(64, 0.75, 0.55) == (48, 28)
    assert ranked_set_sizes(49, 1.0, 0.0) == (49, 49)
    assert ranked_set_sizes(4, 0.5, 0.5) == (2, 2)


def test_ranking_attention_is_ordinary_attention_at_lambda_f_1_lambda_e_0():
    torch.manual_seed(0)
    c, h = 16, 4
    mhra = MultiheadRankingAttention(c, h, lambda_f=1.0, lambda_e=0.0)
    ref = torch.nn.MultiheadAttention(c, h, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mhra.q_proj.weight, mhra.k_proj.weight, mhra.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([mhra.q_proj.bias, mhra.k_proj.bias, mhra.v_proj.bias]))
        ref.out_proj.weight.copy_(mhra.out_proj.weight)
        ref.out_proj.bias.copy_(mhra.out_proj.bias)
    x = torch.randn(3, 7, c)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    expected, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
    assert torch.allclose(mhra.eval()(x, pad), expected, atol=1e-5)


def keys_of(keys):
    """a boolean key set per query -> the key indices of each query"""
    return [row.nonzero().view(-1).tolist() for row in keys]


def test_ranking_attention_selects_each_querys_own_keys_on_a_hand_made_affinity_matrix():
    a = torch.tensor([[[[0.1, 0.9, 0.5, 0.3],     # query 0 ranks keys 1, 2, 3, 0
                        [0.8, 0.2, 0.1, 0.7],     # query 1 ranks keys 0, 3, 1, 2
                        [0.0, 0.4, 0.6, 0.2]]]])  # query 2 ranks keys 2, 1, 3, 0
    mhra = MultiheadRankingAttention(4, 1, lambda_f=0.5, lambda_e=0.5)
    set_f, set_e = mhra.ranked_sets(a, torch.tensor([4]))
    assert keys_of(set_f[0, 0]) == [[1, 2], [0, 3], [1, 2]]  # R[:, :λ_F N] (Eq. 17), per query
    assert keys_of(set_e[0, 0]) == [[0, 3], [1, 2], [0, 3]]  # R[:, (1−λ_E) N:] (Eq. 20)
    v = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = ranked_attention(a, v, set_f)
    for q, keys in enumerate([[1, 2], [0, 3], [2, 1]]):
        w = torch.softmax(a[0, 0, q, keys], dim=0)
        assert torch.allclose(out[0, 0, q], w[0] * v[0, 0, keys[0]] + w[1] * v[0, 0, keys[1]])
    # the whole layer with identity projections: out_proj(concat(O_F, O_E))
    with torch.no_grad():
        for proj in (mhra.q_proj, mhra.k_proj, mhra.v_proj):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
    x = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.5, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    scores = (x @ x.transpose(1, 2) / 2.0).unsqueeze(1)  # √d = 2
    f_sets, e_sets = mhra.ranked_sets(scores, torch.tensor([4]))
    o_f = ranked_attention(scores, x.unsqueeze(1), f_sets)[:, 0]
    o_e = ranked_attention(scores, x.unsqueeze(1), e_sets)[:, 0]
    expected = mhra.out_proj(torch.cat([o_f, o_e], dim=-1))
    assert torch.allclose(mhra.eval()(x), expected, atol=1e-6)
    # query 1 (x = 2·e1) attends forward to keys {1, 2} only: its top-2 affinities
    assert keys_of(f_sets[0, 0])[1] == [1, 2]


def test_ranked_sets_are_sized_by_each_items_own_keys_not_by_its_batchs_padding():
    # item 0 has 4 keys, item 1 has 7: ⌊0.5·4⌋ = 2 forward keys and inverse ranks 2-3 for item 0, whatever the
    # padding to 7 (before: ⌊0.5·7⌋ = 3 forward keys, an inverse set of padding only)
    mhra = MultiheadRankingAttention(4, 1, lambda_f=0.5, lambda_e=0.5)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.0, 0.0, 0.0]).repeat(2, 1, 1, 1)
    scores[0, ..., 4:] = -math.inf  # item 0's padded keys
    set_f, set_e = mhra.ranked_sets(scores, torch.tensor([4, 7]))
    assert keys_of(set_f[:, 0, 0]) == [[1, 2], [1, 2, 3]]
    assert keys_of(set_e[:, 0, 0]) == [[0, 3], [0, 4, 5, 6]]  # ranks ⌊(1−λ_E)N⌋ .. N−1


@pytest.mark.parametrize("lambdas", [(0.75, 0.55), (0.5, 0.5), (1.0, 0.0)])
def test_ranking_encoder_layer_gives_an_item_alone_what_it_gives_it_in_a_padded_batch(lambdas):
    torch.manual_seed(0)
    layer = RankingEncoderLayer(16, 4, 32, *lambdas).eval()
    x = torch.randn(3, 9, 16)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[0, 5:] = True  # 5 real vectors
    pad[2, 2:] = True  # 2 real vectors
    batched = layer(x, pad)
    for i, n in enumerate([5, 9, 2]):
        alone = layer(x[i:i + 1, :n], None)
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- ranking loss (Eq. 24-28)

def test_ranking_loss_and_both_masks_on_a_hand_worked_batch():
    q_star = torch.tensor([0.2, 0.25, 0.6, 0.22])
    q = torch.tensor([0.3, 0.1, 0.5, 0.0])
    t = torch.tensor([0.1, 0.15, 0.2, 0.5])
    # kept by both masks: (0,1) and (1,0), each max(0, 0.05 + 0.2) = 0.25  → 0.5 / 4²
    assert float(ranking_loss(q, q_star, t, 0.12, 0.15)) == pytest.approx(0.5 / 16)
    # without M_tim, (0,3) and (3,0) join: max(0, 0.02 + 0.3) = 0.32 each (M_sen still drops pairs with 2)
    assert float(ranking_loss(q, q_star, t, 1.0, 0.15)) == pytest.approx((0.5 + 0.64) / 16)
    # without M_sen, (0,2) and (2,0) join: max(0, 0.4 − 0.2) = 0.2 each; (1,2): 0.35 − 0.4 < 0
    assert float(ranking_loss(q, q_star, t, 0.12, 1.0)) == pytest.approx((0.5 + 0.4) / 16)
    # predictions in the ground truth's order and spacing: no loss
    assert float(ranking_loss(q_star.clone(), q_star, t, 1.0, 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_sentence_quality_is_the_mean_of_the_bits_over_the_slots():
    bits = torch.tensor([[[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]])
    slots = torch.tensor([[True, True, False]])
    assert float(sentence_quality(bits, slots)[0]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- guided SCST reward

def test_corpus_cider_d_uses_the_corpus_document_frequencies():
    corpus = [["a red ball", "a red circle"], ["a blue box", "a blue square"], ["a green ball", "one green ball"]]
    cider = CorpusCiderD(corpus)
    s = cider.scores(["a red ball", "a blue ball", "a red ball"], [corpus[0], corpus[0], corpus[1]])
    assert s[0] > s[1] > 0 and s[2] < s[1]
    # the same hypothesis scored alone gets the same value (statistics are the corpus's, not the batch's)
    assert cider.scores(["a blue ball"], [corpus[0]])[0] == pytest.approx(s[1])


def test_guided_scst_refuses_to_train_without_a_validation_decode_score():
    from types import SimpleNamespace

    from fairseq_nar_caption.criterions.rdt_scst import RDTSCSTCriterion
    from fairseq_nar_caption.errors import DataError

    task = SimpleNamespace(cfg=SimpleNamespace(eval_cider=False), target_dictionary=None)
    with pytest.raises(DataError, match="rdt_scst validates by decoding: set --eval-cider"):
        RDTSCSTCriterion(task, 5, "greedy", "train", False, False, 0.999)


# ----------------------------------------------------------------------------- retrieval

def hand_made_retrieval(data, items):
    """A retrieval file's JSON for ``items``, bound to ``data`` (its train and test manifests) as
    nar-caption-retrieve binds the files it writes."""
    from fairseq_nar_caption.data.retrieval import data_fingerprint, retrieval_document

    return retrieval_document(items, data_fingerprint(str(data), ["train", "test"]))

def test_retrieval_excludes_own_captions_and_writes_top_k(tiny_data):
    items = ranking.retrieve(str(tiny_data), ["train", "test"], k=2)
    own = {"1": {"a red circle", "a red ball"}, "2": {"a blue square"}, "3": {"a blue circle"}}
    assert set(items) == {"1", "2", "3"}
    for i, sents in items.items():
        assert len(sents) == 2 and not own[i] & set(sents), (i, sents)  # no leakage for training items
    retrieve.cli_main([str(tiny_data), "--splits", "train,test", "--k", "2", "--out", str(tiny_data / "r.json")])
    data = json.loads((tiny_data / "r.json").read_text())
    assert data["k"] == 2 and data["items"] == items


def test_retrieval_dataset_top1_at_test_and_topk_sampling_in_training(tiny_data):
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask
    (tiny_data / "r.json").write_text(json.dumps(hand_made_retrieval(tiny_data, {
        "1": ["a blue square", "a blue circle", "a red ball"], "2": ["a red circle", "a blue circle", "a red ball"],
        "3": ["a red ball", "a blue square", "a red circle"]})))
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json",
                                                            retrieval_topk=2, seed=1))
    d = task.target_dictionary
    task.load_dataset("test")
    batch = task.dataset("test").collater([task.dataset("test")[i] for i in range(2)])
    got = [d.string(r[r.ne(d.pad())]) for r in batch["net_input"]["retrieved_tokens"]]
    assert got == ["a red ball", "a red circle"]  # items 3, 2: their top-1
    ranked = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json",
                                                              retrieval_test_rank=1))
    ranked.load_dataset("test")
    assert [d.string(ranked.dataset("test")[i]["retrieved"]) for i in range(2)] == ["a blue square", "a blue circle"]
    task.load_dataset("train")
    ds = task.dataset("train")
    seen = set()
    for epoch in range(1, 30):
        ds.set_epoch(epoch)
        seen.add(d.string(ds[0]["retrieved"]))  # row 0: item 1
    assert seen == {"a blue square", "a blue circle"}  # uniformly among the top-2 only


def test_retrieval_condition_random_and_none_for_the_reliance_diagnostic(tiny_data):
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask
    (tiny_data / "r.json").write_text(json.dumps(hand_made_retrieval(tiny_data, {
        "1": ["a blue square"], "2": ["a red circle"], "3": ["a red ball"]})))
    pool = {"a blue square", "a red circle", "a red ball"}  # every sentence of the file
    got = {}
    for cond in ("retrieved", "random", "none"):
        task = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json",
                                                                retrieval_condition=cond, seed=3))
        d = task.target_dictionary
        task.load_dataset("test")
        ds = task.dataset("test")
        batch = ds.collater([ds[i] for i in range(2)])
        toks = batch["net_input"]["retrieved_tokens"]
        got[cond] = [d.string(r[r.ne(d.pad())]) for r in toks]
        if cond == "none":  # nothing: every retrieved slot is <pad>, i.e. masked out of the ST's attention
            assert toks.eq(d.pad()).all()
        if cond == "random":  # a sentence of the pool, the same on every read (seeded by (seed, index))
            assert set(got[cond]) <= pool and [d.string(ds[i]["retrieved"]) for i in range(2)] == got[cond]
            seen = set()
            for seed in range(12):  # over seeds the draw covers the pool, not just the item's own retrieval
                other = CaptioningTask.setup_task(CaptioningConfig(
                    data=str(tiny_data), retrieval_file="r.json", retrieval_condition=cond, seed=seed))
                other.load_dataset("test")
                seen.add(d.string(other.dataset("test")[0]["retrieved"]))
            assert seen == pool
    assert got["retrieved"] == ["a red ball", "a red circle"]  # items 3, 2: their top-1
    assert got["none"] == ["", ""]
    with pytest.raises(ValueError, match="retrieval-condition"):
        from fairseq_nar_caption.data.retrieval import RetrievalDataset
        RetrievalDataset(task.dataset("test").dataset, None, "r.json", test_condition="nothing")


def test_training_conditions_gt_share_from_the_human_captions_random_none_and_the_reference_copy_test(tiny_data):
    from conftest import write_tsv
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask
    (tiny_data / "r.json").write_text(json.dumps(hand_made_retrieval(tiny_data, {
        "1": ["a blue square"], "2": ["a red circle"], "3": ["a red ball"]})))
    # distilled targets (one teacher caption per item): the GT share must come from train.tsv's human captions
    write_tsv(tiny_data / "train_distill.tsv", [("1", "a red circle"), ("2", "a blue circle"), ("3", "a blue square")])
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json",
                                                      retrieval_gt_prob=0.5, seed=1))
    d = task.target_dictionary
    task.load_dataset("train_distill")
    ds = task.dataset("train_distill")
    draws = []
    for epoch in range(1, 201):
        ds.set_epoch(epoch)
        draws.append(d.string(ds[0]["retrieved"]))  # item 1, target "a red circle"
    # item 1's human captions are "a red circle" (= the target: never drawn) and "a red ball"
    assert set(draws) == {"a red ball", "a blue square"}
    assert 0.4 < draws.count("a red ball") / len(draws) < 0.6  # the option's share
    pool = {"a blue square", "a red circle", "a red ball"}
    for cond in ("random", "none"):
        t = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json",
                                                       retrieval_train_condition=cond, seed=1))
        t.load_dataset("train")
        tr = t.dataset("train")
        seen = set()
        for epoch in range(1, 40):
            tr.set_epoch(epoch)
            seen |= {d.string(tr[i]["retrieved"]) for i in range(len(tr))}
        assert seen == (pool if cond == "random" else {"<pad>"}), cond  # none: one <pad>, masked out
    ref = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json",
                                                     retrieval_condition="reference"))
    ref.load_dataset("test")
    assert d.string(ref.dataset("test")[0]["retrieved"]) == "a blue circle"  # item 3's first reference


def _tiny_rdt(retrieval_embed, retrieval_slots=False):
    from omegaconf import OmegaConf
    from types import SimpleNamespace

    from conftest import make_dictionary
    from fairseq_nar_caption.models.rdt import RDTConfig, RDTModel

    d = make_dictionary("a red ball blue square circle".split())
    cfg = OmegaConf.structured(RDTConfig(embed_dim=16, ffn_embed_dim=32, attention_heads=2, encoder_layers=1,
                                         semantic_layers=1, decoder_layers=1, seq_len=6, max_source_positions=8,
                                         max_target_positions=16, retrieval_embed=retrieval_embed,
                                         retrieval_slots=retrieval_slots, dropout=0.0,
                                         attention_dropout=0.0))
    task = SimpleNamespace(target_dictionary=d, feature_dim=6, tokens_per_modality=[4],
                           cfg=SimpleNamespace(_name="captioning"))
    return RDTModel.build_model(cfg, task).eval(), d


@pytest.mark.parametrize("retrieval_embed,retrieval_slots", [("separate", False), ("tied", False), ("tied", True)])
def test_the_retrieved_sentence_reaches_the_denoisers_output(retrieval_embed, retrieval_slots):
    torch.manual_seed(0)
    model, d = _tiny_rdt(retrieval_embed, retrieval_slots)
    shared = model.encoder.embed_retrieved.weight is model.decoder.output_projection.weight
    assert shared == (retrieval_embed == "tied")  # tied: the word read and the word written are one vector
    feats = torch.randn(2, 4, 6)
    x_t = torch.randn(2, model.seq_len, model.n_bits)
    gamma = model.gamma(torch.full((2,), 0.5))
    sent = lambda s: torch.tensor([[d.index(w) for w in s.split()] + [d.eos()]] * 2)  # noqa: E731
    outs = {}
    for name, cond in (("a", sent("a red ball")), ("b", sent("a blue square")),
                       ("none", torch.full((2, 1), d.pad()))):
        with torch.no_grad():
            enc = model.encoder(feats, None, retrieved_tokens=cond)
            outs[name] = model.denoise(x_t, gamma, enc)[0]
    assert not torch.allclose(outs["a"], outs["b"])  # another condition, another prediction
    assert not torch.allclose(outs["a"], outs["none"])
    if retrieval_slots:  # slot i also reads the bits of the sentence's i-th word (</s> after it, cut at L)
        seen = []
        model.decoder.in_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        long = torch.tensor([[d.index("red")] * 9 + [d.eos()]])  # longer than L = 6: cut
        with torch.no_grad():
            model.denoise(x_t[:1], gamma[:1], model.encoder(feats[:1], None, retrieved_tokens=long))
            model.denoise(x_t[:1], gamma[:1], model.encoder(feats[:1], None, retrieved_tokens=sent("blue square")[:1]))
        n = model.n_bits
        assert torch.equal(seen[0][0, :, 2 * n:], model.book[torch.tensor([d.index("red")] * 6)])
        expected = [d.index("blue"), d.index("square")] + [d.eos()] * 4
        assert torch.equal(seen[1][0, :, 2 * n:], model.book[torch.tensor(expected)])
    if shared:  # a gradient through the condition reaches the output projection's rows of the condition's words
        model.zero_grad()
        enc = model.encoder(feats, None, retrieved_tokens=sent("blue square"))
        logits = model.denoise(x_t, gamma, enc)[0]
        logits[..., d.index("red")].sum().backward()  # a word outside the condition: its row gets the output's grad
        g = model.decoder.output_projection.weight.grad
        assert g[d.index("blue")].abs().sum() > 0 and g[d.index("square")].abs().sum() > 0


def test_the_denoiser_gives_an_item_alone_what_it_gives_it_in_a_batch_padded_features_and_sentences():
    # real-language concept sets differ in size: items padded to the batch's longest set (and sentence) must get the
    # prediction they get alone (the Ranking Visual Encoder's sets are sized by the item's own vectors)
    torch.manual_seed(0)
    model, d = _tiny_rdt("tied", retrieval_slots=True)
    feats = torch.randn(3, 8, 6)
    pad = torch.zeros(3, 8, dtype=torch.bool)
    pad[0, 3:] = True
    pad[2, 5:] = True
    sentences = [[d.index("red"), d.eos()], [d.index("a"), d.index("blue"), d.index("square"), d.eos()], [d.eos()]]
    cond = torch.full((3, 4), d.pad())
    for i, s in enumerate(sentences):
        cond[i, :len(s)] = torch.tensor(s)
    x_t = torch.randn(3, model.seq_len, model.n_bits)
    gamma = model.gamma(torch.full((3,), 0.7))
    with torch.no_grad():
        batched = model.denoise(x_t, gamma, model.encoder(feats, pad, retrieved_tokens=cond))[0]
        for i, n in enumerate([3, 8, 5]):
            enc = model.encoder(feats[i:i + 1, :n], None, retrieved_tokens=torch.tensor([sentences[i]]))
            alone = model.denoise(x_t[i:i + 1], gamma[i:i + 1], enc)[0]
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-4)


def test_missing_retrieval_item_is_one_clear_error(tiny_data):
    from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask
    (tiny_data / "r.json").write_text(json.dumps(hand_made_retrieval(tiny_data, {"1": ["a red ball"],
                                                                                  "2": ["a red ball"]})))
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="r.json"))
    with pytest.raises(DataError, match=r"r\.json.*1 item\(s\).*'3'"):
        task.load_dataset("test")
    (tiny_data / "bad.json").write_text(json.dumps({"items": {"1": []}}))
    with pytest.raises(DataError, match=r"bad\.json: item 1"):
        CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), retrieval_file="bad.json"))


def _retrieval_corpus(root, n=240, seed=0):
    """Items of 8 topics; captions of 6 words drawn from the topic's 25 words plus 3 shared ones
    (bags of words almost never tie, so the ranking is unique)."""
    from conftest import write_h5, write_tsv

    rng = np.random.default_rng(seed)
    feats, rows = {}, {"train": [], "test": []}
    for i in range(n):
        topic = int(rng.integers(0, 8))
        x = rng.normal(size=(4, 12)).astype("float32")
        x[:, topic] += 2.0
        feats[str(i)] = x
        for _ in range(3):
            words = [f"t{topic}w{rng.integers(0, 25)}" for _ in range(6)]
            words += [f"s{rng.integers(0, 40)}" for _ in range(3)]
            rows["train" if i < 200 else "test"].append((str(i), " ".join(words)))
    write_h5(root / "features.h5", feats)
    for split, r in rows.items():
        write_tsv(root / f"{split}.tsv", r)
    return rows


def test_retrieval_backends_and_score_blocks_agree(tmp_path):
    rows = _retrieval_corpus(tmp_path)
    sparse = ranking.retrieve(str(tmp_path), ["train", "test"], k=5)
    tiny_blocks = ranking.retrieve(str(tmp_path), ["train", "test"], k=5, block_mb=0.001)  # 262 scores a block
    faiss = ranking.retrieve(str(tmp_path), ["train", "test"], k=5, backend="faiss", block_mb=0.001)
    assert sparse == tiny_blocks == faiss and len(sparse) == 240
    own = {}
    for i, c in rows["train"]:
        own.setdefault(i, set()).add(c)
    assert all(not own[i] & set(s) for i, s in sparse.items() if i in own)  # no leakage, also blocked
    # the embedding ranks captions of the item's own topic first
    topic_of = lambda s: s.split()[0].split("w")[0]  # noqa: E731
    hits = sum(topic_of(sparse[i][0]) == topic_of(c) for i, c in rows["test"][::3])
    assert hits >= 36, hits  # of 40 test items


def test_retrieval_writes_its_settings(tmp_path):
    _retrieval_corpus(tmp_path, n=220)
    retrieve.cli_main([str(tmp_path), "--splits", "test", "--k", "3", "--ridge", "2",
                       "--out", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["settings"] == {"feature_files": "features.h5", "feature_key_template": "{}", "ridge": 2.0,
                             "pooling": "mean", "train_split": "train"}
    assert len(r["items"]) == 20 and all(len(s) == 3 for s in r["items"].values())
    # the ranker saved beside it ranks new feature vectors as the file's items were ranked
    from fairseq_nar_caption.data.feature_store import open_feature_store

    ranker = ranking.Ranker.load(ranking.ranker_path(str(tmp_path / "r.json")))
    store = open_feature_store(str(tmp_path / "features.h5"))
    ids = list(r["items"])
    pooled = torch.from_numpy(np.stack([ranker.pool_array(store.get(i)) for i in ids]))
    assert ranker.rank(pooled, 3) == [r["items"][i] for i in ids]
    with pytest.raises(DataError, match="ranker not found"):
        ranking.Ranker.load(str(tmp_path / "none.ranker.npz"))


def test_a_training_target_longer_than_seq_len_is_refused_when_the_split_loads():
    # the task's check_targets hook (tasks/base.py) runs it on every training split before training
    fits = [torch.tensor([5, 6, 2]), torch.tensor([5, 6, 7, 2])]
    RDTModel.check_targets(SimpleNamespace(seq_len=4), fits, lambda i: f"train.tsv: row {i + 2}", 2)
    with pytest.raises(DataError, match=r"train\.tsv: row 3: 5 target tokens .* do not fit --seq-len 4"):
        RDTModel.check_targets(SimpleNamespace(seq_len=4), fits[:1] + [torch.tensor([5, 6, 7, 8, 2])],
                               lambda i: f"train.tsv: row {i + 2}", 2)


def test_init_from_a_missing_ar_checkpoint_is_one_error(tmp_path):
    from fairseq_nar_caption.errors import CheckpointError

    model, _ = _tiny_rdt("tied")
    model.cfg.init_from_ar = str(tmp_path / "ar.pt")
    with pytest.raises(CheckpointError, match=r"ar\.pt: the AR checkpoint .*RDT.*does not exist"):
        model.init_from_pretrained()
