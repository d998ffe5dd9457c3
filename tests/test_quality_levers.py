"""The quality levers of issue #12, each pinned on hand-made cases: glancing (GLAT Eq. 6,
S = round(λ·d)) in the masked-LM and CTC criteria, the Viterbi CTC alignment it glances at
(against brute force), the hybrid CTC decoder (``--ctc-refine-passes``; 0 = CTC), and the
fixed-corpus CIDEr-D that ``--eval-cider`` sums over validation batches (= the corpus score)."""
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary

from fairseq_nar_caption.criterions.common import random_positions
from fairseq_nar_caption.criterions.glancing import GlancingConfig, ctc_best_alignment, glance_count, glancing_ratio
from fairseq_nar_caption.criterions.nacf_loss import NACFLoss
from fairseq_nar_caption.criterions.query_ctc import QueryCTCCriterion
from fairseq_nar_caption.evaluation.coco_metrics import CorpusCiderD, coco_scores
from fairseq_nar_caption.generators.ctc import CTCGenerator, collapse
from fairseq_nar_caption.generators.ctc import CTCOptions
from fairseq_nar_caption.errors import GeneratorError


def dictionary(words=("a", "b", "c", "d")):
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    for s in ("<mask>", "<vis>", "<blank>"):
        d.add_symbol(s)
    return d


def test_glance_count_is_round_half_up_of_lambda_times_distance():
    d = torch.tensor([0, 1, 2, 3, 4, 5, 7])
    assert glance_count(d, 0.5).tolist() == [0, 1, 1, 2, 2, 3, 4]
    assert glance_count(d, 0.3).tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert glance_count(d, 0.0).tolist() == [0] * 7
    cfg = GlancingConfig(glat_ratio=0.5, glat_ratio_final=0.3, glat_anneal_updates=100)
    assert [round(glancing_ratio(cfg, u), 3) for u in (0, 50, 100, 400)] == [0.5, 0.4, 0.3, 0.3]
    assert glancing_ratio(GlancingConfig(glat_ratio=0.5), 10 ** 6) == 0.5


def test_sample_glance_picks_exactly_count_candidates_uniformly():
    torch.manual_seed(0)
    cand = torch.tensor([[True, True, False, True, True], [True, False, False, False, False]])
    hits = torch.zeros(5)
    for _ in range(2000):
        m = random_positions(cand, torch.tensor([2, 1]))
        assert m.sum(1).tolist() == [2, 1] and not (m & ~cand).any()
        hits += m[0].float()
    assert hits[2] == 0 and torch.allclose(hits[[0, 1, 3, 4]] / 2000, torch.full((4,), 0.5), atol=0.05)


def _collapse(path, blank):
    out = []
    for i, t in enumerate(path):
        if t != blank and (i == 0 or path[i - 1] != t):
            out.append(t)
    return out


def test_ctc_best_alignment_is_the_most_probable_alignment_by_brute_force():
    torch.manual_seed(1)
    blank, V, N = 0, 3, 6
    targets = [[1, 1, 2], [2], [1, 2, 1], [2, 2]]
    lp = torch.randn(len(targets), N, V).log_softmax(-1)
    L = max(map(len, targets))
    tgt = torch.tensor([t + [1] * (L - len(t)) for t in targets])  # padded with a real symbol: must be ignored
    path = ctc_best_alignment(lp, tgt, torch.tensor([len(t) for t in targets]), blank)
    for b, t in enumerate(targets):
        best = max((p for p in itertools.product(range(V), repeat=N) if _collapse(p, blank) == t),
                   key=lambda p: sum(float(lp[b, i, s]) for i, s in enumerate(p)))
        assert path[b].tolist() == list(best), (t, path[b].tolist(), best)
        assert _collapse(path[b].tolist(), blank) == t


class _FakeCTCModel(torch.nn.Module):
    """A query decoder whose first pass gives fixed logits; records the glance tokens."""
    training = True

    def __init__(self, logits):
        super().__init__()
        self.logits, self.glances, self.num_updates = logits, [], 0

    def forward_encoder(self, net_input):
        return {}

    def decoder(self, encoder_out=None, glance_tokens=None):
        self.glances.append(glance_tokens)
        return self.logits.clone().requires_grad_(), {"padding_mask": None}

    def get_normalized_probs(self, net_output, log_probs):
        return net_output[0].log_softmax(-1)


def test_query_ctc_glancing_shows_round_lambda_d_aligned_frames():
    d = dictionary()
    blank, a, b = d.index("<blank>"), d.index("a"), d.index("b")
    task = SimpleNamespace(target_dictionary=d)
    N = 6
    # first pass argmax: a a _ _ _ _ ; the target "a b" is best aligned as a a _ b _ _ or similar
    logits = torch.full((1, N, len(d)), -5.0)
    for t, s in enumerate([a, a, blank, blank, blank, blank]):
        logits[0, t, s] = 5.0
    logits[0, 3, b] = 4.0  # frame 3 prefers blank, b is second
    crit = QueryCTCCriterion(task, glat_ratio=0.5)
    model = _FakeCTCModel(logits)
    target = torch.tensor([[a, b, d.eos()]])
    loss, _, log = crit(model, {"net_input": {}, "target": target})
    lp = logits.log_softmax(-1)
    aligned = ctc_best_alignment(lp, torch.tensor([[a, b]]), torch.tensor([2]), blank)
    dist = int((lp.argmax(-1) != aligned).sum())
    assert dist >= 1 and log["glat_distance"] == dist
    shown = model.glances[1].ne(d.pad())
    assert int(shown.sum()) == log["glat_revealed"] == math.floor(0.5 * dist + 0.5)
    assert torch.equal(model.glances[1][shown], aligned[shown])  # shown frames carry their aligned token
    assert model.glances[0] is None and torch.isfinite(loss)
    # λ = 0: one plain pass (the paper's training)
    model0 = _FakeCTCModel(logits)
    model0.forward = lambda **kw: model0.decoder()
    QueryCTCCriterion(task)(model0, {"net_input": {}, "target": target})
    assert model0.glances == [None]


class _FakeMLM(torch.nn.Module):
    training = True

    def __init__(self, logits):
        super().__init__()
        self.logits, self.inputs, self.num_updates = logits, [], 0

    def forward_encoder(self, net_input):
        return {}

    def forward_length(self, encoder_out):
        return torch.full((self.logits.size(0), 32), -math.log(32))

    def forward_decoder_nar(self, tokens, encoder_out):
        self.inputs.append(tokens.clone())
        return self.logits.clone().requires_grad_()


def test_nacf_glancing_reveals_round_lambda_d_target_words_and_predicts_the_rest():
    d = dictionary()
    a, b, c = d.index("a"), d.index("b"), d.index("c")
    words = [a, b, c, a, b]
    logits = torch.full((1, 5, len(d)), -5.0)
    for t, s in enumerate([a, c, c, b, c]):  # wrong at positions 1, 3, 4: d = 3
        logits[0, t, s] = 5.0
    task = SimpleNamespace(target_dictionary=d)
    crit = NACFLoss(task, vis_weight=0.0, mask_ratio_low=0.35, mask_ratio_high=0.9, length_weight=1.0,
                    label_smoothing=0.0, visual_words_include_be=False, glat_ratio=0.5)
    model = _FakeMLM(logits)
    sample = {"net_input": {}, "target": torch.tensor([words + [d.eos()]]),
              "length_target": torch.nn.functional.one_hot(torch.tensor([5]), 32).float(),
              "ntokens": 6, "nsentences": 1}
    crit(model, sample)
    first, second = model.inputs
    assert first.eq(d.index("<mask>")).all()  # MP's first pass: all <mask>
    shown = second.ne(d.index("<mask>"))
    assert int(shown.sum()) == 2  # round(0.5 · 3)
    assert torch.equal(second[shown], torch.tensor(words)[shown[0]])


class _FakeQueryModel(torch.nn.Module):
    """forward_decoder(encoder_out, glance_tokens): a first pass with fixed log-probs; a
    refinement pass predicts ``second`` where nothing is shown."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second, self.glances = first, second, []
        self.num_output_positions = first.size(1)

    def forward_encoder(self, net_input):
        return {}

    def forward_decoder(self, encoder_out, glance_tokens=None):
        self.glances.append(glance_tokens)
        return (self.first if glance_tokens is None else self.second).clone(), None


def _lp(rows, V, conf):
    x = torch.full((1, len(rows), V), -8.0)
    for t, (s, c) in enumerate(zip(rows, conf)):
        x[0, t, s] = c
    return x.log_softmax(-1)


def test_hybrid_ctc_equals_ctc_without_refinement_and_keeps_the_shown_frames():
    d = dictionary()
    blank, a, b, c = d.index("<blank>"), d.index("a"), d.index("b"), d.index("c")
    V = len(d)
    first = _lp([a, blank, b, b, blank, c], V, [9, 8, 2, 3, 9, 1])
    second = _lp([c, c, a, a, c, a], V, [5] * 6)

    def run(k):
        model = _FakeQueryModel(first, second)
        gen = CTCGenerator([model], d, CTCOptions(ctc_refine_passes=k))
        hyp = gen.generate([model], {"net_input": {}})[0][0]["tokens"][:-1].tolist()
        return hyp, model.glances

    plain, glances = run(0)
    assert glances == [None] and plain == collapse(first.argmax(-1), blank)[0] == [a, b, c]
    hyp, glances = run(1)
    assert len(glances) == 2 and glances[0] is None
    # pass 1 shows the N·1/2 = 3 most confident frames of the draft: frames 0, 1, 4 (a, _, _)
    assert glances[1][0].tolist() == [a, blank, d.pad(), d.pad(), blank, d.pad()]
    assert hyp == collapse(torch.tensor([[a, blank, a, a, blank, a]]), blank)[0] == [a, a, a]
    with pytest.raises(GeneratorError, match="--ctc-refine-passes must be >= 0"):
        CTCOptions(ctc_refine_passes=-1).validate()


def test_dedup_removes_immediate_repeats_and_keeps_the_scores_of_the_kept_tokens():
    from fairseq_nar_caption.generators.base import dedup_hypotheses

    d = dictionary()
    blank, a, b, c = d.index("<blank>"), d.index("a"), d.index("b"), d.index("c")
    hyp = {"tokens": torch.tensor([a, a, b, c, c, c, a, d.eos()]), "score": -1.5, "alignment": None,
           "positional_scores": torch.tensor([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8])}
    out = dedup_hypotheses([[hyp]])[0][0]
    assert out["tokens"].tolist() == [a, b, c, a, d.eos()]  # a non-adjacent repeat stays
    assert out["positional_scores"].tolist() == pytest.approx([-0.1, -0.3, -0.4, -0.7, -0.8])
    assert out["score"] == -1.5 and hyp["tokens"].numel() == 8  # the input is not modified
    # through the generator frame: CTC keeps "a _ a" as two words (a blank separates them); --dedup merges them
    first = _lp([a, blank, a, b, blank, c], V := len(d), [9, 8, 7, 9, 9, 9])

    def run(dedup):
        model = _FakeQueryModel(first, first)
        return CTCGenerator([model], d, CTCOptions(), dedup=dedup).generate([model], {"net_input": {}})[0][0]

    assert run(False)["tokens"][:-1].tolist() == [a, a, b, c]
    assert run(True)["tokens"][:-1].tolist() == [a, b, c]


def test_corpus_cider_summed_over_batches_equals_coco_cider_d():
    refs = {"1": ["a red circle on a grey background", "a small red circle"],
            "2": ["a blue square next to a green star", "two shapes a blue square and a star"],
            "3": ["a yellow triangle", "a big yellow triangle on grey"],
            "4": ["a green star and a red circle", "a star left of a circle"]}
    hyps = {"1": "a red circle", "2": "a blue square and a star", "3": "a yellow triangle on grey",
            "4": "a red star"}
    corpus = CorpusCiderD(list(refs.values()))
    ids = list(refs)
    batches = [ids[:3], ids[3:]]
    total = sum(corpus.scores([hyps[i] for i in bt], [refs[i] for i in bt]).sum() for bt in batches)
    expected = coco_scores(refs, hyps, spice="off", metrics=("CIDEr-D",))["CIDEr-D"]
    assert total / len(ids) == pytest.approx(expected, rel=1e-9)


def test_nacf_scale_positions_gives_positions_the_token_scale():
    from fairseq_nar_caption.models.ar_caption import transformer_config
    from fairseq_nar_caption.models.nacf import NACFConfig, NACFDecoder

    d = dictionary()
    tokens = torch.full((1, 4), d.index("<mask>"))
    enc = {"encoder_out": [torch.zeros(3, 1, 16)], "encoder_padding_mask": []}
    for scale in (False, True):
        cfg = NACFConfig(embed_dim=16, ffn_embed_dim=32, attention_heads=2, decoder_layers=1, dropout=0.0,
                         max_target_positions=8, enhance_input="none", scale_positions=scale)
        emb = torch.nn.Embedding(len(d), 16, padding_idx=d.pad())
        dec = NACFDecoder(cfg, transformer_config(cfg), d, emb)
        seen = []
        dec.layernorm_embedding.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        dec(tokens, enc)
        expected = 4.0 * emb(tokens) + (4.0 if scale else 1.0) * dec.embed_positions(tokens)  # sqrt(16) = 4
        assert torch.allclose(seen[0], expected, atol=1e-6)


def test_goal_table_reads_the_quality_goals_off_a_benchmark_json(tmp_path, capsys):
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "arena"))
    import goals

    def row(name, cider, ms):
        return {"name": name, "scores": {"CIDEr-D": cider / 100}, "latency": {"median_ms": ms},
                "x_bare": 1.1, "overhead": 1.1}

    rows = [row("AR beam 5", 160.0, 100.0), row("NARVL CTC", 150.0, 20.0), row("NARVL CTC + 1 refinement", 155.0, 30.0),
            row("NACF CT-MP T=2 B=3", 152.5, 40.0), row("NACF CT-MP T=5 B=6", 170.0, 90.0),
            row("RDT T=10", 120.0, 45.0), row("RDT T=50", 121.5, 200.0)]
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"rows": rows}))
    goals.main([str(path), "--retrieved-cider", "99.0"])
    out = capsys.readouterr().out
    # NACF: the T=5 row is not 2x faster; the best fast row is 152.5 = 95.3 % of 160
    assert "| NACF: best row ≥ 2× faster reaches ≥ 95 % of AR beam 5 (160.0) | 152.5 = 95 % (NACF CT-MP T=2 B=3, 2.50×) | met |" in out
    assert "| NARVL: best row ≥ 2× faster reaches ≥ 95 % of AR beam 5 (160.0) | 155.0 = 97 % (NARVL CTC + 1 refinement, 3.33×) | met |" in out
    assert "| CTC (one pass) ≥ 90 % of AR beam 5 | 150.0 = 94 % (NARVL CTC) | met |" in out
    assert "| RDT T=10 within 1 CIDEr-D of T=50 | 120.0 vs 121.5 | not met |" in out
    assert "| RDT T=10 ≥ 20 CIDEr-D above its retrieved sentence alone | 120.0 vs 99.0 | met |" in out
    # issue #20: the best AR row is the reference; the shallow-decoder row and throughput
    for r, passes, rep, thr in zip(rows, [3, 1, 2, 3, 6, 10, 50], [0, .02, .01, .08, 0, .3, .2], [50, 300, 200, 120, 60, 90, 20]):
        r.update(decoder_passes=passes, repeat_rate=rep, throughput=thr, throughput_batch=64)
    rows += [dict(row("AR greedy", 165.0, 30.0), decoder_passes=12, repeat_rate=0, throughput=150),
             dict(row("AR shallow greedy", 150.0, 10.0), decoder_passes=12, repeat_rate=0, throughput=200)]
    path.write_text(json.dumps({"rows": rows, "environment": {"best_ar": "AR greedy", "compare": ["AR shallow greedy"]}}))
    goals.main([str(path)])
    out = capsys.readouterr().out
    assert "| CTC ≥ 6× faster than AR greedy (batch 1, CPU) | 1.50× | not met |" in out
    assert "| best one-pass NAR row ≥ 90 % of AR greedy (165.0) at ≥ 4× its batch-1 speed |" not in out  # none 4x
    assert "| no NAR row above 5 % captions with an immediately repeated word | worst 30.0 % (RDT T=10;" in out
    assert "| AR beam ≥ AR greedy | 160.0 (AR beam 5) vs 165.0 | not met |" in out
    assert "| NAR rows ≥ 3× faster than AR shallow greedy (batch 1) | 0/6 rows; slowest 0.05× (RDT T=50) | not met |" in out
    assert "| fastest NAR row's throughput at batch 64 ≥ 1.5× AR greedy's | 2.00× (NARVL CTC, 300 vs 150 items/s) | met |" in out
    # issue #22: each "+ SCST" row against its cross-entropy row (gain and repeats), beam 5 vs greedy after SCST
    rows += [dict(row("NARVL CTC + SCST", 158.0, 20.0), repeat_rate=0.01), dict(row("RDT T=10 + SCST", 140.0, 45.0),
             repeat_rate=0.35), row("AR beam 5 + SCST", 170.0, 100.0), row("AR greedy + SCST", 172.0, 30.0)]
    path.write_text(json.dumps({"rows": rows, "environment": {"best_ar": "AR greedy + SCST"}}))
    goals.main([str(path)])
    out = capsys.readouterr().out
    assert "| NARVL CTC: SCST ≥ cross-entropy + 5 CIDEr-D, repeats not higher | 158.0 vs 150.0 (+8.0); repeats 1.0 % vs 2.0 % | met |" in out
    assert "| RDT T=10: SCST ≥ cross-entropy + 5 CIDEr-D, repeats not higher | 140.0 vs 120.0 (+20.0); repeats 35.0 % vs 30.0 % | not met |" in out
    assert "| AR beam 5: SCST ≥ cross-entropy + 5 CIDEr-D, repeats not higher | 170.0 vs 160.0 (+10.0) | met |" in out
    assert "| AR beam 5 ≥ AR greedy after SCST | 170.0 vs 172.0 | not met |" in out
    assert "| AR beam ≥ AR greedy | 160.0 (AR beam 5) vs 165.0 | not met |" in out  # the SCST rows stay out of it


def test_orderings_pair_seeds_and_give_a_verdict_per_claim(tmp_path):
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "arena"))
    import orderings

    def row(name, cider):
        return {"name": name, "scores": {"CIDEr-D": cider / 100}}

    rows = [row("AR beam 5", 200.0)]
    # KD helps NARVL in every seed; CE beats Q-CTC in every seed; SAIC k=2 vs k=4: the seeds disagree
    for s, (kd, raw, ctc, ce, k2, k4) in enumerate([(150, 140, 120, 130, 180, 170), (160, 150, 121, 131, 175, 178),
                                                     (155, 153, 119, 129, 182, 181)], 1):
        rows += [row(f"narvl_kd CTC / seed {s}", kd), row(f"narvl_raw CTC / seed {s}", raw),
                 row(f"narvl_ctc CTC / seed {s}", ctc), row(f"narvl_ce CTC / seed {s}", ce),
                 row(f"saic2_kd (1,1) / seed {s}", k2), row(f"saic4_kd (1,1) / seed {s}", k4)]
    res = orderings.analyse({"rows": rows})
    arm = res["arms"]["narvl_kd CTC"]
    assert arm["mean"] == pytest.approx(155.0) and arm["sd"] == pytest.approx(5.0) and arm["of_ar_beam5"] == pytest.approx(0.775)
    claims = {c["claim"]: c for c in res["claims"]}
    assert set(claims) == {"KD helps NARVL", "Q-CTC ≫ position-wise CE", "k = 2 ≥ k = 4 in quality",
                           "glancing helps NARVL"}
    kd = claims["KD helps NARVL"]
    assert kd["diffs"] == pytest.approx([10, 10, 2]) and kd["verdict"] == "holds"
    assert claims["Q-CTC ≫ position-wise CE"]["verdict"] == "reversed"
    k = claims["k = 2 ≥ k = 4 in quality"]
    assert k["diffs"] == pytest.approx([10, -3, 1]) and k["verdict"] == "unresolved"
    assert claims["glancing helps NARVL"]["mean_diff"] == pytest.approx(35.0)
    # the three smallest |mean difference| (2.7, 7.3, 10.0) are the closest; glancing's +35 is not
    assert {n for n, c in claims.items() if c.get("closest")} == set(claims) - {"glancing helps NARVL"}
    md = orderings.markdown(res)
    assert "| KD helps NARVL (NARVL Table 9): narvl_kd CTC vs narvl_raw CTC | +10.0, +10.0, +2.0 | +7.3 ± 4.6 | holds" in md
