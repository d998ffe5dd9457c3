"""SAIC (Fei et al.): group mask (Fig. 3), relative position attention (Eq. 6-8),
Outliner/Filler layouts, Eq. 10 on a stub with controlled probabilities, k = 1 =
the AR model, curriculum (Eq. 9) and hybrid distillation (Algorithm 1), the Section 3
masking strategies, and a tiny SAIC trained through fairseq-train (initialised from a
tiny AR, hybrid distillation, curriculum) that beats the most-frequent caption."""
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fairseq.data import data_utils
from fairseq.models import FairseqIncrementalDecoder
from omegaconf import OmegaConf

from conftest import BIN, REPO, USER_DIR, decode_batched_and_single, make_dictionary, run_cli, write_tsv
from fairseq_nar_caption.cli import distill
from fairseq_nar_caption.criterions.group_mask import (GroupMaskCriterion, group_proportion, hybrid_targets,
                                                       split_batch)
from fairseq_nar_caption.data.hybrid_distill import HybridDistillDataset
from fairseq_nar_caption.data.manifest import read_manifest
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.data.toy import ToyConfig, generate
from fairseq_nar_caption.evaluation.baselines import most_frequent_caption
from fairseq_nar_caption.evaluation.coco_metrics import coco_scores
from fairseq_nar_caption.generators import RuledSequenceGenerator, banned_symbols, build_caption_generator
from fairseq_nar_caption.models.ar_caption import ARCaptionModel, CaptionModelConfig
from fairseq_nar_caption.models.modules.rpr_attention import RelativePositionMultiheadAttention
from fairseq_nar_caption.models.saic import (SAICConfig, SAICModel, filler_layout, filler_targets, group_mask,
                                             outline_layout)
from fairseq_nar_caption.tasks.captioning import CaptioningConfig, CaptioningTask

sys.path.insert(0, os.path.join(REPO, "scripts"))
import saic_section3  # noqa: E402

WORDS = "a b c d e f g h red ball on grass".split()


def dictionary():
    return make_dictionary(WORDS)


def ids(d, text):
    return [d.index(w) for w in text.split()]


# ----------------------------------------------------------------------------- group mask (Fig. 3)

def test_group_mask_k2_is_the_documented_pattern():
    visible = group_mask(torch.arange(6), torch.arange(6), 2).int().tolist()
    assert visible == [[1, 0, 0, 0, 0, 0],
                       [1, 0, 0, 0, 0, 0],
                       [1, 0, 1, 0, 0, 0],
                       [1, 0, 1, 0, 0, 0],
                       [1, 0, 1, 0, 1, 0],
                       [1, 0, 1, 0, 1, 0]]


@pytest.mark.parametrize("n,k", [(1, 1), (7, 1), (9, 3), (10, 3), (8, 4), (13, 4), (5, 6)])
def test_group_mask_for_several_lengths_and_group_sizes(n, k):
    visible = group_mask(torch.arange(n), torch.arange(n), k)
    for i in range(n):
        # row i: exactly the first word of each group up to and including i's own group
        own_group_start = (i // k) * k
        assert visible[i].nonzero().view(-1).tolist() == list(range(0, own_group_start + 1, k))
    if k == 1:
        assert torch.equal(visible, torch.ones(n, n, dtype=torch.bool).tril())  # causal = AR
    # on the heads alone (positions 0, k, 2k, ...) it is causal: what the Outliner runs
    heads = torch.arange(0, n, k)
    assert torch.equal(group_mask(heads, heads, k), torch.ones(len(heads), len(heads), dtype=torch.bool).tril())


# ----------------------------------------------------------------------------- RPR attention (Eq. 6-8)

def rpr_attention(window=2, embed=8, heads=2):
    torch.manual_seed(0)
    attn = RelativePositionMultiheadAttention(embed, heads, window).eval()
    with torch.no_grad():
        attn.rel_keys.weight.normal_()
        attn.rel_values.weight.normal_()
        for p in (attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias):
            p.normal_()
    return attn


def direct_rpr(attn, x, positions, blocked, key_pad):
    """Eq. 6-8 with loops:
    o_i = Σ_j softmax_j(q_i·(k_j + a^K_clip(p_j−p_i)) / sqrt(d)) (v_j + a^V_clip(p_j−p_i))."""
    T, B, C = x.shape
    H, hd, w = attn.num_heads, attn.head_dim, attn.window
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    out = torch.zeros(T, B, C)
    for b in range(B):
        for h in range(H):
            sl = slice(h * hd, (h + 1) * hd)
            for i in range(T):
                logits, values = [], []
                for j in range(T):
                    r = max(-w, min(w, int(positions[j] - positions[i]))) + w  # Eq. 8, then table index
                    e = q[i, b, sl] @ (k[j, b, sl] + attn.rel_keys.weight[r]) / math.sqrt(hd)
                    logits.append(-math.inf if blocked[i, j] or key_pad[b, j] else e)
                    values.append(v[j, b, sl] + attn.rel_values.weight[r])
                alpha = torch.softmax(torch.stack([torch.as_tensor(e, dtype=torch.float) for e in logits]), 0)
                out[i, b, sl] = sum(a * val for a, val in zip(alpha, values))
    return attn.out_proj(out)


def test_rpr_attention_matches_the_direct_computation_with_clipping():
    attn = rpr_attention(window=2)
    T, B = 7, 2  # distances up to 6 > w = 2: clipping matters
    x = torch.randn(T, B, 8)
    positions = torch.tensor([0, 1, 2, 3, 5, 8, 9])
    blocked = torch.rand(T, T) < 0.3
    blocked.fill_diagonal_(False)
    key_pad = torch.zeros(B, T, dtype=torch.bool)
    key_pad[1, -2:] = True
    with torch.no_grad():
        got, _ = attn(x, key_padding_mask=key_pad, attn_mask=blocked, positions=positions)
        want = direct_rpr(attn, x, positions, blocked, key_pad)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # the additive form of the same mask gives the same result
        additive = torch.zeros(T, T).masked_fill(blocked, float("-inf"))
        torch.testing.assert_close(attn(x, key_padding_mask=key_pad, attn_mask=additive, positions=positions)[0], got)
        # a clipped distance is a clipped distance: moving far keys further changes nothing
        # when the query only sees keys at distance >= w
        only_far = torch.ones(T, T, dtype=torch.bool)
        only_far[6, :3] = False  # query at 9 sees keys at 0, 1, 2 (distances -9..-7, all clip to -2)
        a = attn(x, attn_mask=only_far, positions=positions)[0][6]
        b = attn(x, attn_mask=only_far, positions=positions - torch.tensor([5, 5, 5, 0, 0, 0, 0]))[0][6]
        torch.testing.assert_close(a, b)


def test_zero_window_is_plain_attention_and_zero_tables_change_nothing():
    torch.manual_seed(1)
    plain = RelativePositionMultiheadAttention(8, 2, 0).eval()
    fresh = RelativePositionMultiheadAttention(8, 2, 3).eval()  # tables start at zero
    assert not hasattr(plain, "rel_keys")
    fresh.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(5, 3, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        ref = torch.nn.MultiheadAttention(8, 2)
        ref.in_proj_weight.copy_(torch.cat([plain.q_proj.weight, plain.k_proj.weight, plain.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([plain.q_proj.bias, plain.k_proj.bias, plain.v_proj.bias]))
        ref.out_proj.weight.copy_(plain.out_proj.weight)
        ref.out_proj.bias.copy_(plain.out_proj.bias)
        want = ref(x, x, x, attn_mask=causal, need_weights=False)[0]
        torch.testing.assert_close(plain(x, attn_mask=causal)[0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fresh(x, attn_mask=causal)[0], want, atol=1e-5, rtol=1e-5)


def test_incremental_rpr_decoding_equals_the_full_pass():
    attn = rpr_attention(window=3)
    T, B, stride = 6, 3, 2  # the Outliner's heads: positions 0, 2, 4, ...
    x = torch.randn(T, B, 8)
    positions = torch.arange(T) * stride
    with torch.no_grad():
        full, _ = attn(x, attn_mask=torch.ones(T, T, dtype=torch.bool).triu(1), positions=positions)
        state, steps = {}, []
        for t in range(T):
            steps.append(attn(x[t: t + 1], incremental_state=state, positions=positions[t: t + 1])[0])
        torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)
        # positions default to "after the last cached key" (stride 1 from 0)
        state = {}
        steps = [attn(x[t: t + 1], incremental_state=state)[0] for t in range(T)]
        unit = attn(x, attn_mask=torch.ones(T, T, dtype=torch.bool).triu(1))[0]
        torch.testing.assert_close(torch.cat(steps), unit, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- layouts

def test_outliner_and_filler_layouts_of_the_documented_example():
    d = dictionary()
    eos, pad, mask = d.eos(), d.pad(), d.index("<mask>")
    target = torch.tensor([ids(d, "a red ball on grass") + [eos], ids(d, "a ball") + [eos] + [pad] * 3])
    prev, heads = outline_layout(target, 2, eos, pad)
    assert prev.tolist() == [[eos] + ids(d, "a ball grass"), [eos] + ids(d, "a") + [pad, pad]]
    assert heads.tolist() == [ids(d, "a ball grass") + [eos], ids(d, "a") + [eos, pad, pad]]
    tokens = filler_layout(heads, 2, mask, pad)
    assert tokens.tolist() == [[d.index("a"), mask, d.index("ball"), mask, d.index("grass"), mask, eos],
                               [d.index("a"), mask, eos, pad, pad, pad, pad]]
    # k - 1 = 1 <mask> slot after every outlined word; targets: the skipped words, </s> past the end
    assert filler_targets(target, tokens, 2, eos, pad).tolist() == [
        [pad, d.index("red"), pad, d.index("on"), pad, eos, pad],
        [pad, d.index("ball"), pad, pad, pad, pad, pad]]


def test_layouts_for_k3_and_k1():
    d = dictionary()
    eos, pad, mask = d.eos(), d.pad(), d.index("<mask>")
    target = torch.tensor([ids(d, "a b c d e f") + [eos], ids(d, "g h") + [eos] + [pad] * 4])
    prev, heads = outline_layout(target, 3, eos, pad)  # m = 2 and 1
    assert heads.tolist() == [ids(d, "a d") + [eos], ids(d, "g") + [eos, pad]]
    tokens = filler_layout(heads, 3, mask, pad)
    assert tokens.tolist() == [[d.index("a"), mask, mask, d.index("d"), mask, mask, eos],
                               [d.index("g"), mask, mask, eos, pad, pad, pad]]
    assert filler_targets(target, tokens, 3, eos, pad)[1, :4].tolist() == [pad, d.index("h"), eos, pad]
    # k = 1: fairseq's prev_output_tokens and target; nothing to fill
    prev1, heads1 = outline_layout(target, 1, eos, pad)
    assert prev1.tolist() == [[eos] + ids(d, "a b c d e f"), [eos] + ids(d, "g h") + [pad] * 4]
    assert heads1.tolist() == target.tolist()
    assert not filler_layout(heads1, 1, mask, pad).eq(mask).any()


# ----------------------------------------------------------------------------- models with random weights

SIZES = dict(embed_dim=16, ffn_embed_dim=32, attention_heads=2, encoder_layers=1, decoder_layers=2, dropout=0.0,
             attention_dropout=0.0, max_source_positions=16, max_target_positions=24)


def fake_task(d):
    return SimpleNamespace(target_dictionary=d, feature_dim=6, tokens_per_modality=[4],
                           cfg=SimpleNamespace(feature_files="f.h5"))


def outline_fill(d, m_out, m_fill, model, args):
    return build_caption_generator("outline-fill", [model], d, SimpleNamespace(outline_beam=m_out, fill_beam=m_fill),
                                   args)


def gen_args(**kw):
    args = dict(max_len_a=0, max_len_b=12, min_len=1, unnormalized=False, lenpen=1.0, unkpen=0.0, temperature=1.0)
    args.update(kw)
    return SimpleNamespace(**args)


def saic_model(d, k, seed=0, rpr_noise=True, **cfg):
    torch.manual_seed(seed)
    model = SAICModel.build_model(OmegaConf.structured(SAICConfig(group_size=k, **SIZES, **cfg)), fake_task(d))
    if rpr_noise:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "rel_" in name:
                    p.normal_(std=0.5)
    return model.eval()


def batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 4, 6, generator=g)
    padding = torch.zeros(n, 4, dtype=torch.bool)
    padding[1::2, 3] = True
    return {"id": torch.arange(n), "net_input": {"features": feats, "padding_mask": padding}}


def test_outliner_on_heads_equals_the_full_length_group_masked_pass_and_incremental_steps():
    d = dictionary()
    k = 3
    model = saic_model(d, k)
    target = torch.tensor([ids(d, "a b c d e f g") + [d.eos()]])  # N = 7, m = 3
    prev, heads = outline_layout(target, k, d.eos(), d.pad())
    enc = model.forward_encoder(batch(1)["net_input"])
    with torch.no_grad():
        compact = model.forward_outliner(prev, enc)  # heads at positions 0, 3, 6, 9
        # the full-length sequence: position p holds y'_{p-k} (</s> for p < k), group mask of Fig. 3
        L = prev.size(1) * k - (k - 1)
        full_tokens = torch.cat([torch.full((1, k), d.eos()), target[:, : L - k]], 1)
        assert full_tokens[0, ::k].tolist() == prev[0].tolist()
        pos = torch.arange(L)
        full = model.decoder.run(full_tokens, pos, enc, self_attn_mask=~group_mask(pos, pos, k))
        torch.testing.assert_close(full[:, ::k], compact, atol=1e-5, rtol=1e-5)
        state = {}
        steps = [model.forward_outliner(prev[:, : t + 1], enc, incremental_state=state) for t in range(prev.size(1))]
        torch.testing.assert_close(torch.cat(steps, 1), compact, atol=1e-5, rtol=1e-5)


def test_k1_reproduces_ar_greedy_and_beam_of_the_same_weights():
    # An ar_caption model and a SAIC k = 1 model with its weights.  RPR stays enabled
    # (w = k = 1) with the tables at their initial zeros, so the relative-position path
    # runs and adds nothing: the Outliner is the AR decoder and nothing is filled.
    d = dictionary()
    torch.manual_seed(0)
    ar = ARCaptionModel.build_model(OmegaConf.structured(CaptionModelConfig(**SIZES)), fake_task(d)).eval()
    with torch.no_grad():  # a larger </s> embedding: random weights then end captions at varied lengths
        ar.decoder.embed_tokens.weight[d.eos()] *= 6
    sa = saic_model(d, 1, rpr_noise=False)
    missing, unexpected = sa.load_state_dict(ar.state_dict(), strict=False)
    assert unexpected == ["decoder.version"] and all("rel_" in m for m in missing)
    sample = batch(6)
    for beam in (1, 5):
        # the AR row as the task builds it: fairseq's beam search under the one vocabulary rule
        want = RuledSequenceGenerator([ar], d, banned=banned_symbols(d), beam_size=beam,
                                      max_len_b=12).generate([ar], sample)
        got = outline_fill(d, beam, 1, sa, gen_args()).generate([sa], sample)
        lengths = set()
        for w, g in zip(want, got):
            assert g[0]["tokens"].tolist() == w[0]["tokens"].tolist()
            torch.testing.assert_close(g[0]["positional_scores"], w[0]["positional_scores"], atol=1e-4, rtol=1e-4)
            lengths.add(len(w[0]["tokens"]))
        assert len(lengths) > 1  # captions of several lengths, not all cut at max length


@pytest.mark.parametrize("m_out,m_fill", [(1, 1), (4, 1), (4, 3)])
def test_batch1_equals_batched(m_out, m_fill):
    d = dictionary()
    model = saic_model(d, 2, seed=5)
    gen = outline_fill(d, m_out, m_fill, model, gen_args())
    sample = batch(5, seed=2)
    batched = gen.generate([model], sample)
    for i in range(5):
        one = {"id": sample["id"][i: i + 1],
               "net_input": {k: v[i: i + 1] for k, v in sample["net_input"].items()}}
        single = gen.generate([model], one)[0]
        assert [h["tokens"].tolist() for h in single] == [h["tokens"].tolist() for h in batched[i]]
        assert len(single) == m_fill


def test_fill_beam_larger_than_outline_beam_is_refused():
    d = dictionary()
    with pytest.raises(ValueError, match="M_out >= M_fill"):
        outline_fill(d, 2, 3, saic_model(d, 2), gen_args())


# ----------------------------------------------------------------------------- Eq. 10 on a stub

class StubOutliner(FairseqIncrementalDecoder):
    """P(next head | outlined words so far): ``table[prefix] = {word: p}``; log-probs of
    other words -30 (negligible)."""

    def __init__(self, d, table):
        super().__init__(d)
        self.table = table

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **unused):
        out = torch.full((*prev_output_tokens.shape, len(self.dictionary)), -30.0)
        for b, row in enumerate(prev_output_tokens.tolist()):
            prefix = self.dictionary.string(torch.tensor(row[1:]))
            for word, p in self.table[prefix].items():
                out[b, -1, self.dictionary.index(word)] = math.log(p)
        return out, {"attn": [None]}

    def max_positions(self):
        return 24


class StubSAIC(torch.nn.Module):
    """Outliner from ``StubOutliner``; Filler: ``fills[filler input string][slot] = (word, p)``,
    probability p on the word, the rest spread evenly."""

    def __init__(self, d, k, outline_table, fills):
        super().__init__()
        self.d, self.group_size, self.fills = d, k, fills
        self.decoder = StubOutliner(d, outline_table)
        self.encoder = SimpleNamespace(reorder_encoder_out=lambda enc, order: {
            "encoder_out": [enc["encoder_out"][0].index_select(1, order)]})
        self.filler_calls = 0

    def forward_encoder(self, net_input):
        return {"encoder_out": [net_input["features"].transpose(0, 1)]}

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return torch.log_softmax(net_output[0], dim=-1)

    def forward_filler(self, tokens, encoder_out):
        self.filler_calls += 1
        V = len(self.d)
        out = torch.full((*tokens.shape, V), math.log(1 / V))
        for b, row in enumerate(tokens):
            key = " ".join(self.d[i] for i in row.tolist() if i != self.d.pad())
            for slot, (word, p) in self.fills[key].items():
                out[b, slot] = math.log((1 - p) / (V - 1))  # p on the word, the rest spread evenly
                out[b, slot, self.d.index(word)] = math.log(p)
        return out


OUTLINES = {"": {"a": 0.6, "b": 0.4}, "a": {"c": 0.55, "</s>": 0.45}, "b": {"</s>": 0.9, "d": 0.1},
            "a c": {"</s>": 1.0}, "b d": {"</s>": 1.0}}
FILLS = {"a <mask> c <mask> </s>": {1: ("e", 0.5), 3: ("</s>", 0.8)},
         "b <mask> </s>": {1: ("f", 0.9)}}


def test_filler_input_layout_and_eq10_ranking_hand_worked():
    # k = 2, M_out = 2.  Outliner beam: step 1 candidates b</s> .4·.9 = .36, a c .33, a</s> .27:
    # "b </s>" finishes; step 2 "a c </s>" (.33) finishes.  Normalised by length (fairseq's
    # default) the beam ranks "a c" (log .33 / 3) before "b" (log .36 / 2).
    # Filler inputs: "a <mask> c <mask> </s>" → e (.5), </s> (.8) → "a e c", truncated at the
    # first </s>;  "b <mask> </s>" → f (.9) → "b f".
    # Eq. 10: "a e c": .6·.55·1 (Outliner) · .5·.8 (Filler) = .132;  "b f": .4·.9 · .9 = .324.
    d = dictionary()
    sample = {"id": torch.arange(1), "net_input": {"features": torch.zeros(1, 2, 3),
                                                   "padding_mask": torch.zeros(1, 2, dtype=torch.bool)}}

    def run(m_fill):
        stub = StubSAIC(d, 2, OUTLINES, FILLS)
        hyps = outline_fill(d, 2, m_fill, stub, gen_args()).generate([stub], sample)[0]
        assert stub.filler_calls == 1  # one pass for all M_fill outlines of the batch
        return [(d.string(h["tokens"]), h["score"], h["positional_scores"]) for h in hyps]

    (cap, score, pos), = run(1)  # the Outliner's best outline, filled
    assert cap == "a e c" and score == pytest.approx(math.log(0.132), abs=1e-6)
    # per kept token: a (Outliner), e (Filler), c (Outliner), </s> (Filler, slot 3)
    torch.testing.assert_close(pos, torch.log(torch.tensor([0.6, 0.5, 0.55, 0.8])), atol=1e-6, rtol=0)
    ranked = run(2)  # both outlines filled; Eq. 10 prefers "b f"
    assert [c for c, _, _ in ranked] == ["b f", "a e c"]
    assert [s for _, s, _ in ranked] == pytest.approx([math.log(0.324), math.log(0.132)], abs=1e-6)
    torch.testing.assert_close(ranked[0][2], torch.log(torch.tensor([0.4, 0.9, 0.9])), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- training (Algorithm 1)

def test_curriculum_proportion_follows_eq9():
    assert [group_proportion(t, 100, 1.0) for t in (0, 25, 50, 100, 150)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert group_proportion(50, 100, 2.0) == pytest.approx(0.25)
    assert group_proportion(25, 100, 0.5) == pytest.approx(0.5)
    torch.manual_seed(0)
    for p_g, bsz in ((0.3, 10), (0.25, 10), (0.0, 7), (1.0, 7)):
        counts = [int(split_batch(bsz, p_g).sum()) for _ in range(2000)]
        lo = math.floor(p_g * bsz)
        assert set(counts) <= {lo, lo + 1}
        assert np.mean(counts) == pytest.approx(p_g * bsz, abs=0.08)


def criterion_batch(d, repeat=1):
    """8 captions (and their distilled versions), ``repeat`` times."""
    caps = ["a red ball on grass", "a ball", "b c d e f g", "h", "a b", "red ball", "c d e", "on grass a b c"]
    distilled = ["a ball on grass", "a red ball", "b c d", "h a", "a b c", "a ball", "c d", "on grass"]

    def collate(texts):
        return data_utils.collate_tokens([torch.tensor(ids(d, t) + [d.eos()]) for t in texts * repeat], d.pad())

    sample = batch(8 * repeat)
    sample.update(target=collate(caps), distill_target=collate(distilled),
                  item_ids=[str(i) for i in range(8 * repeat)])
    return sample


def test_criterion_splits_batches_by_the_curriculum_over_training_steps():
    d = dictionary()
    model = saic_model(d, 2).train()
    crit = GroupMaskCriterion(SimpleNamespace(target_dictionary=d), 100, 1.0, 1.0, 0.1)
    sample = criterion_batch(d)
    torch.manual_seed(0)
    for t in (0, 30, 60, 100, 130):
        model.set_num_updates(t)
        loss, size, log = crit(model, sample)
        p_g = min(1.0, t / 100)
        assert log["p_g"] == pytest.approx(p_g)
        assert log["group_rows"] in (math.floor(8 * p_g), math.floor(8 * p_g) + 1)
        terms = {k[:-7] for k in log if k.endswith("_tokens")}
        if log["group_rows"] == 0:
            assert terms == {"aic", "naic"}
        elif log["group_rows"] == 8:
            assert terms == {"outliner", "filler"}
        else:
            assert terms == {"aic", "naic", "outliner", "filler"}
        assert size == sum(log[f"{k}_tokens"] for k in terms) and torch.isfinite(loss)
    # at p_g = 1 every caption gives its Outliner and Filler samples: outline words + </s>,
    # and the k - 1 = 1 slot after each outlined word
    model.set_num_updates(100)
    _, _, log = crit(model, sample)
    words = [5, 2, 6, 1, 2, 2, 3, 5]
    assert log["outliner_tokens"] == sum(math.ceil(n / 2) + 1 for n in words)
    assert log["filler_tokens"] == sum(math.ceil(n / 2) for n in words)
    # AIC samples: every word and </s>; validation scores Outliner + Filler on raw captions
    model.set_num_updates(0)
    _, _, log = crit(model, sample)
    assert log["aic_tokens"] == sum(words) + 8
    model.eval()
    _, _, log = crit(model, sample)
    assert log["group_rows"] == 8 and log["raw_rows"] == 8 and log["p_g"] == 1.0


def test_hybrid_distillation_picks_raw_and_distilled_at_the_right_rate():
    d = dictionary()
    torch.manual_seed(0)
    raw = torch.tensor([ids(d, "a b c") + [d.eos()]] * 4000)
    distilled = torch.tensor([ids(d, "d e") + [d.eos(), d.pad()]] * 4000)
    for p in (0.5, 0.2):
        target, from_raw = hybrid_targets(raw, distilled, p, d.pad())
        assert from_raw.float().mean().item() == pytest.approx(p, abs=0.025)  # 4 binomial std
        assert torch.equal(target[from_raw], raw[from_raw])
        assert torch.equal(target[~from_raw][:, :4], distilled[~from_raw])
    assert hybrid_targets(raw[:5], distilled[:5], 1.0, d.pad())[1].all()
    assert not hybrid_targets(raw[:5], distilled[:5], 0.0, d.pad())[1].any()
    # through the criterion: raw_rows counts the rows that kept the raw caption
    model = saic_model(d, 2).train()
    crit = GroupMaskCriterion(SimpleNamespace(target_dictionary=d), 100, 1.0, 0.25, 0.1)
    sample = criterion_batch(d, repeat=8)
    rows = [crit(model, sample)[2]["raw_rows"] for _ in range(25)]
    assert np.mean(rows) / 64 == pytest.approx(0.25, abs=0.05)  # 1600 draws: 4 binomial std
    del sample["distill_target"]
    with pytest.raises(ValueError, match="--hybrid-distill-split"):
        crit(model, sample)


def test_hybrid_distill_dataset_through_the_task_option(tiny_data):
    write_tsv(tiny_data / "train_distill.tsv", [("1", "a red circle"), ("2", "a blue square"), ("3", "a circle")])
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(tiny_data), hybrid_distill_split="train_distill"))
    task.load_dataset("train")
    ds = task.dataset("train")
    assert isinstance(ds, HybridDistillDataset) and len(ds) == 4
    samples = [ds[i] for i in range(4)]
    b = ds.collater(samples)
    d = task.target_dictionary
    by_item = {"1": "a red circle", "2": "a blue square", "3": "a circle"}
    for row, s in zip(b["distill_target"], samples):
        assert d.string(row[row.ne(d.pad())]) == by_item[s["item_id"]]
    task.load_dataset("test")  # evaluation splits are not wrapped
    assert not isinstance(task.dataset("test"), HybridDistillDataset)
    write_tsv(tiny_data / "train_distill.tsv", [("1", "a red circle"), ("3", "a circle")])
    with pytest.raises(DataError, match=r"train_distill.tsv: no distilled caption for 1 item\(s\).*: 2"):
        task.load_dataset("train")
    write_tsv(tiny_data / "train_distill.tsv", [("1", "a red circle"), ("2", "a square"), ("3", "a circle"),
                                                ("1", "a circle")])
    with pytest.raises(DataError, match="train_distill.tsv: item 1: more than one"):
        task.load_dataset("train")


# ----------------------------------------------------------------------------- Section 3 masking

def test_section3_masking_strategies():
    n = 10
    assert saic_section3.mask_positions("head", n, 0.3).tolist() == [0, 1, 2]
    assert saic_section3.mask_positions("tail", n, 0.3).tolist() == [7, 8, 9]
    # N_mask = max(1, ⌊N·p⌋): a short caption still gets one mask
    assert saic_section3.mask_positions("head", 2, 0.3).tolist() == [0]
    rnd = saic_section3.mask_positions("random", n, 0.3, rng=np.random.default_rng(0))
    assert len(rnd) == 3 and len(set(rnd.tolist())) == 3
    # Group: k = 1/(1 − p) (Eq. 5); the first word of every group stays
    assert saic_section3.group_size_for(0.5) == 2 and saic_section3.group_size_for(0.75) == 4
    assert saic_section3.group_size_for(0.7) == 3
    assert saic_section3.mask_positions("group", n, 0.7).tolist() == [1, 2, 4, 5, 7, 8]


# ----------------------------------------------------------------------------- a tiny SAIC, end to end

COMMON = ["--user-dir", USER_DIR, "--task", "captioning", "--embed-dim", "64", "--ffn-embed-dim", "128",
          "--attention-heads", "4", "--encoder-layers", "1", "--decoder-layers", "2", "--dropout", "0.1",
          "--optimizer", "adam", "--batch-size", "32", "--num-workers", "0", "--valid-subset", "val",
          "--no-epoch-checkpoints", "--cpu", "--no-progress-bar", "--seed", "1"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: more threads only contend


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Toy images (300 train); AR (ar_caption) → greedy distillation → SAIC (k = 2) from
    the AR weights with curriculum and hybrid distillation, through fairseq-train."""
    root = tmp_path_factory.mktemp("saic")
    generate(str(root / "toy"), ToyConfig(seed=4, n_images=(300, 20, 40), n_videos=(4, 2, 2)), log=lambda s: None)
    data = root / "toy" / "images"

    def train(*args):
        run_cli([os.path.join(BIN, "fairseq-train"), str(data), *COMMON, *args], env=ONE_THREAD)

    ar = root / "ar" / "checkpoint_best.pt"
    train("--arch", "ar_caption_tiny", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
          "--lr", "3e-3", "--max-update", "300", "--save-dir", str(ar.parent))
    distill.distill(str(data), str(ar), generate_args=["--beam", "1"])
    saic = root / "saic" / "checkpoint_best.pt"
    train("--arch", "saic_tiny", "--group-size", "2", "--init-from-ar", str(ar), "--criterion", "group_mask",
          "--curriculum-updates", "120", "--p-hybr", "0.5", "--hybrid-distill-split", "train_distill",
          "--lr", "1e-3", "--max-update", "200", "--save-dir", str(saic.parent))
    return data, ar, saic


def test_initialised_from_the_ar_checkpoint(trained):
    data, ar, _ = trained
    task = CaptioningTask.setup_task(CaptioningConfig(data=str(data)))
    cfg = OmegaConf.structured(SAICConfig(_name="saic", group_size=2, embed_dim=64, ffn_embed_dim=128,
                                          attention_heads=4, encoder_layers=1, decoder_layers=2,
                                          max_source_positions=256, max_target_positions=32, init_from_ar=str(ar)))
    model = task.build_model(cfg)  # a fresh build applies --init-from-ar
    state = torch.load(ar, weights_only=True)["model"]
    own = model.state_dict()
    assert [k for k in state if k not in own] == ["decoder.version"]  # every AR parameter is used
    for k in state:
        if k in own:
            assert torch.equal(own[k], state[k]), k
    new = [k for k in own if k not in state]
    assert new and all(".self_attn.rel_" in k for k in new) and all(not own[k].any() for k in new)


def test_tiny_saic_beats_the_most_frequent_caption_through_fairseq_generate(trained, tmp_path):
    data, _, saic = trained
    out = run_cli([os.path.join(BIN, "fairseq-generate"), str(data), "--user-dir", USER_DIR,
                   "--task", "captioning", "--path", str(saic), "--gen-subset", "test",
                   "--generator", "outline-fill", "--outline-beam", "5", "--fill-beam", "1",
                   "--max-len-b", "30", "--batch-size", "20", "--cpu"], env=ONE_THREAD).stdout
    hyps = {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in out.splitlines() if line.startswith("H-")}
    assert sorted(hyps) == list(range(40))
    test_rows = read_manifest(str(data / "test.tsv"))
    refs = {}
    for r in test_rows:
        refs.setdefault(r.item_id, []).append(r.caption)
    order = list(refs)
    ours = coco_scores(refs, {order[i]: h for i, h in hyps.items()}, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
    mfc = most_frequent_caption(read_manifest(str(data / "train.tsv")))
    floor = coco_scores(refs, {i: mfc for i in order}, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
    assert ours > 2 * floor, (ours, floor)


def test_trained_saic_batch1_equals_batched(trained):
    data, _, saic = trained
    _, batched, single = decode_batched_and_single(
        data, ["--path", str(saic), "--generator", "outline-fill", "--outline-beam", "3", "--fill-beam", "2",
               "--cpu"], max_items=12)
    assert single == {i: batched[i] for i in single}
    assert len(set(batched.values())) > 5  # captions depend on the image
