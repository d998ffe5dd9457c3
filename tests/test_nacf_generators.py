"""NACF decoding algorithms on a stub model whose probabilities we control.

The stub's prediction at each position depends on the caption length N and on
which positions of the input are <mask> (or on the input being all <vis>, the
template pass), so each test below is a hand-worked trace of Eq. 9-17.
"""
import math
import zlib
from types import SimpleNamespace

import pytest
import torch

from conftest import make_dictionary
from fairseq_nar_caption.generators import build_caption_generator

WORDS = "a b c d e f g h x".split()


def dictionary():
    return make_dictionary(WORDS)


class Stub(torch.nn.Module):
    """tables[item][(N, masked positions) or (N, "vis")] = [(word, prob) per position];
    lengths[item] = {N: prob}.  Probability p on the word, the rest spread evenly."""

    def __init__(self, d, tables, lengths, n_max=8):
        super().__init__()
        self.d, self.tables = d, tables
        self.encoder = SimpleNamespace(reorder_encoder_out=lambda enc, order: {
            k: [t.index_select(0, order) for t in v] for k, v in enc.items()})
        self.length_lprobs = torch.full((len(lengths), n_max), -30.0)
        for i, dist in enumerate(lengths):
            for n, p in dist.items():
                self.length_lprobs[i, n] = math.log(p)
        self.calls = 0

    def forward_encoder(self, net_input):
        return {"item": [net_input["features"][:, 0, 0].long()]}

    def forward_length(self, enc):
        return self.length_lprobs[enc["item"][0]]

    def forward_decoder_nar(self, tokens, enc):
        self.calls += 1
        V = len(self.d)
        out = torch.empty(*tokens.shape, V)
        for b, item in enumerate(enc["item"][0].tolist()):
            row = tokens[b]
            n = int(row.ne(self.d.pad()).sum())
            key = (n, "vis") if row.eq(self.d.index("<vis>")).any() else \
                (n, tuple(row[:n].eq(self.d.index("<mask>")).nonzero().view(-1).tolist()))
            table = self.tables[item].get(key) if item < len(self.tables) else None
            for pos in range(tokens.size(1)):
                if pos >= n:
                    word, p = "x", 0.5
                elif table is not None:
                    word, p = table[pos]
                else:  # no hand-written entry: deterministic values hashed from the situation
                    h = zlib.crc32(repr((item, key, pos)).encode())
                    word = "<mask>" if key[1] == "vis" and h % 3 == 0 else WORDS[h % len(WORDS)]
                    p = 0.2 + 0.7 * ((h >> 8) % 1000) / 1000
                out[b, pos] = math.log((1 - p) / (V - 1))
                out[b, pos, self.d.index(word)] = math.log(p)
        return out


def make_generator(stub, algorithm, ct, **opts):
    cfg = dict(nar_iterations=5, nar_q=1, length_beam=1, nar_min_length=1, nar_skip_template_revisit=False,
               length_norm_alpha=1.0, teacher_path=None, nar_remask_repeats=False)
    cfg.update(opts)
    g = build_caption_generator(("ct-" if ct else "") + algorithm, [stub], stub.d, SimpleNamespace(**cfg))
    g.trace = []
    return g


def decode(g, items):
    feats = torch.tensor(items, dtype=torch.float).view(-1, 1, 1)
    hyps = g.generate([g.model], {"net_input": {"features": feats}})
    return [g.model.d.string(h[0]["tokens"][:-1]) for h in hyps], hyps


def observed_sets(g):
    return [sorted(r["observed"][0].nonzero().view(-1).tolist()) for r in g.trace]


MP_TABLE = {
    (4, (0, 1, 2, 3)): [("a", .9), ("b", .2), ("c", .6), ("d", .4)],
    (4, (1, 3)): [("f", .99), ("e", .3), ("f", .99), ("f", .8)],
    (4, (1,)): [("f", .99), ("b", .7), ("f", .99), ("f", .99)],
    (4, "vis"): [("<mask>", .9)] * 4,  # an empty template
}


def test_mask_predict_hand_worked():
    # T = 3, N = 4.  t=1 predicts all: confidences .9 .2 .6 .4; m_2 = max(⌊4·2/3⌋,1) = 2
    # → keep {0, 2} (Eq. 13).  t=2 re-predicts 1, 3 (e .3, f .8); m_3 = max(⌊4/3⌋,1) = 1
    # → keep {0, 2, 3}.  t=3 re-predicts 1 (b .7).  Observed tokens are never overwritten.
    d = dictionary()
    g = make_generator(Stub(d, [MP_TABLE], [{4: 1.0}]), "mp", False, nar_iterations=3)
    caps, hyps = decode(g, [0])
    assert caps == ["a b c f"]
    assert observed_sets(g) == [[], [0, 2], [0, 2, 3]]
    assert g.model.calls == 3
    torch.testing.assert_close(hyps[0][0]["positional_scores"][:4], torch.log(torch.tensor([.9, .7, .6, .8])))


REPEAT_TABLE = {
    (4, (0, 1, 2, 3)): [("a", .5), ("b", .9), ("b", .8), ("d", .4)],
    (4, (0, 3)): [("a", .9), ("x", .5), ("x", .5), ("e", .6)],
    (4, (0, 2, 3)): [("a", .9), ("x", .5), ("c", .7), ("e", .6)],
    (4, (3,)): [("x", .5), ("x", .5), ("x", .5), ("d", .8)],
    (4, "vis"): [("<mask>", .9)] * 4,
}


@pytest.mark.parametrize("remask, caption, sets", [
    # t=1: a .5, b .9, b .8, d .4; m_2 = 2 → keep the two most confident, {1, 2}: the repeated b's
    (False, "a b b d", [[], [1, 2], [0, 1, 2]]),
    # with the option the less confident b (position 2, .8) is re-predicted at t=2 beside its neighbour: c .7
    (True, "a b c d", [[], [1], [0, 1, 2]]),
])
def test_mask_predict_remasks_the_lesser_of_two_repeated_words(remask, caption, sets):
    d = dictionary()
    g = make_generator(Stub(d, [REPEAT_TABLE], [{4: 1.0}]), "mp", False, nar_iterations=3,
                       nar_remask_repeats=remask)
    assert decode(g, [0])[0] == [caption]
    assert observed_sets(g) == sets


def test_lesser_of_repeats_chains_ties_and_padding():
    from fairseq_nar_caption.generators.mask_predict import MaskPredictGenerator
    tokens = torch.tensor([[5, 5, 5, 7], [3, 3, 1, 1]])  # row 1: two words, then padding (1) that repeats
    scores = torch.tensor([[.1, .5, .3, .2], [.4, .4, 0., 0.]])
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    lesser = MaskPredictGenerator._lesser_of_repeats(tokens, scores, valid)
    # row 0: pair (0, 1) → 0 (.1 < .5); pair (1, 2) → 2 (.3 < .5).  Row 1: a tie → the right one; no padding
    assert lesser.tolist() == [[True, False, True, False], [False, True, False, False]]


@pytest.mark.parametrize("algorithm", ["ef", "l2r"])
def test_remask_repeats_is_refused_outside_mask_predict(algorithm):
    from fairseq_nar_caption.errors import GeneratorError
    d = dictionary()
    with pytest.raises(GeneratorError, match="--nar-remask-repeats works with mp / ct-mp"):
        make_generator(Stub(d, [], [{4: 1.0}]), algorithm, True, nar_remask_repeats=True)


def test_ct_mp_with_empty_template_equals_mp():
    d = dictionary()
    mp = make_generator(Stub(d, [MP_TABLE], [{4: 1.0}]), "mp", False, nar_iterations=3)
    ct = make_generator(Stub(d, [MP_TABLE], [{4: 1.0}]), "mp", True, nar_iterations=3)
    assert decode(ct, [0])[0] == decode(mp, [0])[0] == ["a b c f"]
    assert observed_sets(ct) == observed_sets(mp)
    assert ct.model.calls == mp.model.calls + 1  # the template pass


def test_ct_mask_predict_keeps_template_words_observed_at_first():
    # template: b at 1 (Eq. 9-10); t=1 predicts only 0, 2, 3 (Eq. 11-12)
    d = dictionary()
    table = {
        (4, "vis"): [("<mask>", .9), ("b", .8), ("<mask>", .9), ("<mask>", .6)],
        (4, (0, 2, 3)): [("a", .9), ("x", .99), ("c", .5), ("d", .4)],
        (4, (3,)): [("x", .99), ("x", .99), ("x", .99), ("e", .7)],
    }
    # T = 2: after t=1 C = .9 .8 .5 .4, m_2 = max(⌊4·1/2⌋,1) = 2 → keep {0, 1}; t=2 re-predicts 2, 3
    table[(4, (2, 3))] = [("x", .99), ("x", .99), ("g", .6), ("h", .5)]
    g = make_generator(Stub(d, [table], [{4: 1.0}]), "mp", True, nar_iterations=2)
    assert decode(g, [0])[0] == ["a b g h"]
    assert observed_sets(g) == [[1], [0, 1]]


def test_ct_easy_first_hand_worked_with_template_revisit():
    # template {1: b}; EF q=1 fixes the most confident unobserved token per pass (Eq. 15):
    # pass 1 (mask 0,2,3): c .9 at 2; pass 2 (mask 0,3): a .7 at 0; pass 3 (mask 3): d.
    # Eq. 16: one more pass with only the template position masked re-predicts it (g).
    d = dictionary()
    table = {
        (4, "vis"): [("<mask>", .9), ("b", .8), ("<mask>", .9), ("<mask>", .7)],
        (4, (0, 2, 3)): [("a", .6), ("x", .99), ("c", .9), ("d", .5)],
        (4, (0, 3)): [("a", .7), ("x", .99), ("x", .99), ("e", .4)],
        (4, (3,)): [("x", .99), ("x", .99), ("x", .99), ("d", .95)],
        (4, (1,)): [("x", .99), ("g", .6), ("x", .99), ("x", .99)],
    }
    g = make_generator(Stub(d, [table], [{4: 1.0}]), "ef", True)
    assert decode(g, [0])[0] == ["a g c d"]
    assert observed_sets(g) == [[1], [1, 2], [0, 1, 2], [0, 1, 2, 3], [0, 2, 3]]
    g2 = make_generator(Stub(d, [table], [{4: 1.0}]), "ef", True, nar_skip_template_revisit=True)
    assert decode(g2, [0])[0] == ["a b c d"]


def test_left_to_right_hand_worked_q2():
    # no template; q=2 leftmost unobserved per pass (Eq. 17): {0,1}, then {2,3}, then {4}
    d = dictionary()
    table = {
        (5, (0, 1, 2, 3, 4)): [("a", .3), ("b", .2), ("c", .9), ("d", .9), ("e", .9)],
        (5, (2, 3, 4)): [("x", .99), ("x", .99), ("f", .4), ("g", .3), ("h", .9)],
        (5, (4,)): [("x", .99)] * 4 + [("c", .5)],
    }
    g = make_generator(Stub(d, [table], [{5: 1.0}]), "l2r", False, nar_q=2)
    assert decode(g, [0])[0] == ["a b f g c"]
    assert observed_sets(g) == [[], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4]]


def test_easy_first_plain_fixes_by_confidence_with_ties_to_the_left():
    d = dictionary()
    table = {
        (3, (0, 1, 2)): [("a", .5), ("b", .8), ("c", .8)],  # tie between 1 and 2 → 1 first
        (3, (0, 2)): [("d", .5), ("x", .99), ("e", .6)],
        (3, (0,)): [("f", .5), ("x", .99), ("x", .99)],
    }
    g = make_generator(Stub(d, [table], [{3: 1.0}]), "ef", False)
    assert decode(g, [0])[0] == ["f b e"]
    assert observed_sets(g) == [[], [1], [1, 2], [0, 1, 2]]


def length_beam_tables():
    # item 0: lengths 2 (p .6) and 3 (p .4); greedy one-pass tables (T=1)
    return [{
        (2, (0, 1)): [("a", .5), ("b", .5)],  # Σ log p = 2·log .5 = -1.386; /2 = -0.693
        (3, (0, 1, 2)): [("c", .9), ("d", .9), ("e", .6)],  # -0.2107-0.2107-0.5108 = -0.932; /3 = -0.311
    }]


def test_length_beam_picks_the_best_normalised_candidate():
    d = dictionary()
    g1 = make_generator(Stub(d, length_beam_tables(), [{2: .6, 3: .4}]), "mp", False, nar_iterations=1)
    assert decode(g1, [0])[0] == ["a b"]  # B = 1: only the most probable length
    g2 = make_generator(Stub(d, length_beam_tables(), [{2: .6, 3: .4}]), "mp", False, nar_iterations=1,
                        length_beam=2)
    caps, hyps = decode(g2, [0])
    assert caps == ["c d e"]
    assert hyps[0][0]["score"] == pytest.approx((2 * math.log(.9) + math.log(.6)) / 3, abs=1e-5)
    assert g2.model.calls == 1  # both lengths in one batched pass


def test_teacher_rescoring_multiplies_probabilities():
    d = dictionary()

    class Teacher:
        """AR stub: log p_AR = log .9 for 'a'/'b', log .01 for anything else."""
        encoder = SimpleNamespace(reorder_encoder_out=lambda enc, order: enc)
        decoder_calls = []

        def forward_encoder(self, net_input):
            return {}

        def decoder(self, prev, encoder_out=None):
            Teacher.decoder_calls.append(prev.clone())
            V = len(d)
            logits = torch.full((*prev.shape, V), math.log(.01 / (V - 2)))
            logits[..., d.index("a")] = logits[..., d.index("b")] = math.log(.9 / 2 * 2)  # p .9 each
            return logits, {}

    g = make_generator(Stub(d, length_beam_tables(), [{2: .6, 3: .4}]), "mp", False, nar_iterations=1,
                       length_beam=2)
    g.teacher = Teacher()
    caps, hyps = decode(g, [0])
    # the teacher's preference for "a b" outweighs the NAR confidence of "c d e"
    assert caps == ["a b"]
    prev = Teacher.decoder_calls[0]
    assert prev[:, 0].eq(d.eos()).all()  # fairseq AR input: </s> then the caption
    lp = torch.log_softmax(Teacher().decoder(prev)[0], -1)[0, 0, d.index("a")]
    assert hyps[0][0]["score"] == pytest.approx((2 * math.log(.5) + 2 * float(lp)) / 2, abs=1e-4)


@pytest.mark.parametrize("algorithm, remask", [("mp", False), ("mp", True), ("ef", False), ("l2r", False)])
@pytest.mark.parametrize("ct", [False, True])
def test_batch1_equals_batched(algorithm, remask, ct):
    # five items, three length candidates each, lengths 1-7: rows of different widths in one batch
    d = dictionary()
    lengths = [{1: .5, 3: .3, 7: .2}, {4: .6, 2: .3, 5: .1}, {6: .7, 3: .2, 1: .1}, {2: .4, 5: .35, 4: .25},
               {7: .9, 6: .05, 5: .05}]
    opts = dict(nar_iterations=3, length_beam=3, nar_q=2, nar_remask_repeats=remask)
    batched = make_generator(Stub(d, [], lengths), algorithm, ct, **opts)
    single = make_generator(Stub(d, [], lengths), algorithm, ct, **opts)
    caps, hyps = decode(batched, list(range(5)))
    assert caps == [decode(single, [i])[0][0] for i in range(5)]
    assert len({len(c.split()) for c in caps}) > 2  # the items really differ in length
