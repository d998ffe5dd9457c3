"""DAG captioning (models/dag.py, criterions/dag_loss.py, generators/dag.py): the forward programme
against brute-force enumeration of every path, its gradient by gradcheck, Viterbi against brute force,
greedy and lookahead against hand-worked graphs, glancing's count on a hand-made case, and a tiny model
trained with fairseq-train, decoded with fairseq-generate in every mode (batch 1 = batched), against
the most-frequent-caption baseline; a graph smaller than a target is one clear error."""
import itertools
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import BIN, USER_DIR, assert_one_line, decode_batched_and_single, make_dictionary, run_cli
from fairseq_nar_caption.criterions.dag_loss import DAGLossCriterion
from fairseq_nar_caption.data.manifest import read_manifest
from fairseq_nar_caption.data.toy import ToyConfig, generate
from fairseq_nar_caption.evaluation.baselines import most_frequent_caption
from fairseq_nar_caption.evaluation.coco_metrics import coco_scores
from fairseq_nar_caption.generators.dag import DECODES, DAGGenerator, DAGOptions
from fairseq_nar_caption.models.dag import (dag_best_alignment, dag_best_path, dag_log_likelihood, link_log_probs,
                                            transition_mask)

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def random_graph(bsz, n, vocab, band=0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    token_lp = torch.randn(bsz, n, vocab, generator=g, dtype=dtype).log_softmax(-1)
    link_lp = link_log_probs(torch.randn(bsz, n, n, generator=g, dtype=dtype), band)
    return token_lp, link_lp


def paths(n, m, band=0):
    """Every path of m vertices from vertex 0 to vertex n − 1 (increasing, steps <= band if band)."""
    if m == 1:
        return [(0,)] if n == 1 else []
    out = []
    for mid in itertools.combinations(range(1, n - 1), m - 2):
        p = (0, *mid, n - 1)
        if band and any(b - a > band for a, b in zip(p, p[1:])):
            continue
        out.append(p)
    return out


def path_score(token_lp, link_lp, p, tokens):
    return float(sum(token_lp[v, t] for v, t in zip(p, tokens)) + sum(link_lp[a, b] for a, b in zip(p, p[1:])))


@pytest.mark.parametrize("band", [0, 2])
def test_log_likelihood_equals_brute_force_over_every_path(band):
    n, vocab = 6, 5
    token_lp, link_lp = random_graph(3, n, vocab, band, seed=band)
    target = torch.tensor([[1, 2, 4, 0], [3, 3, 0, 0], [2, 1, 1, 4]])  # 4 = the last token of each caption
    lengths = torch.tensor([3, 2, 4])
    target[0, 2], target[1, 1] = 4, 4
    got = dag_log_likelihood(token_lp, link_lp, target, lengths)
    for b in range(3):
        m = int(lengths[b])
        terms = [path_score(token_lp[b], link_lp[b], p, target[b, :m].tolist()) for p in paths(n, m, band)]
        want = torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0) if terms else -math.inf
        assert math.isclose(float(got[b]), float(want), rel_tol=1e-9, abs_tol=1e-9), (b, got[b], want)
    # more tokens than vertices: no path
    long = torch.arange(1, 8).view(1, 7) % vocab
    assert dag_log_likelihood(token_lp[:1], link_lp[:1], long, torch.tensor([7])).item() == -math.inf


def test_brute_force_on_every_small_graph_and_length():
    for n in range(1, 8):
        for m in range(1, min(n, 4) + 1):
            token_lp, link_lp = random_graph(1, n, 4, seed=10 * n + m)
            target = torch.randint(0, 4, (1, m), generator=torch.Generator().manual_seed(n + m))
            got = float(dag_log_likelihood(token_lp, link_lp, target, torch.tensor([m])))
            terms = [path_score(token_lp[0], link_lp[0], p, target[0].tolist()) for p in paths(n, m)]
            want = float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0)) if terms else -math.inf
            assert (got == want == -math.inf) or math.isclose(got, want, rel_tol=1e-9), (n, m, got, want)


def test_gradient_passes_gradcheck_in_double_precision():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target, lengths = torch.tensor([[1, 2, 3], [2, 3, 0]]), torch.tensor([3, 2])

    def f(lg, sc):
        return dag_log_likelihood(lg.log_softmax(-1), link_log_probs(sc, 0), target, lengths)

    assert torch.autograd.gradcheck(f, (logits, scores), eps=1e-6, atol=1e-6)


def test_viterbi_alignment_and_best_path_equal_brute_force():
    n, vocab = 7, 4
    token_lp, link_lp = random_graph(2, n, vocab, seed=5)
    target, lengths = torch.tensor([[1, 2, 3, 0], [3, 1, 0, 0]]), torch.tensor([4, 3])
    path = dag_best_alignment(token_lp, link_lp, target, lengths)
    for b in range(2):
        m = int(lengths[b])
        best = max(paths(n, m), key=lambda p: path_score(token_lp[b], link_lp[b], p, target[b, :m].tolist()))
        assert tuple(path[b, :m].tolist()) == best and (path[b, m:] == -1).all()
    node = token_lp[0].max(-1).values
    for alpha in (0.0, 1.0):
        got, score = dag_best_path(node, link_lp[0], alpha)
        cands = [(p, sum(float(node[v]) for v in p) + sum(float(link_lp[0, a, c]) for a, c in zip(p, p[1:])))
                 for m in range(1, n + 1) for p in paths(n, m)]
        want = max(cands, key=lambda pc: pc[1] / len(pc[0]) ** alpha)
        assert tuple(got) == want[0] and math.isclose(score, want[1] / len(want[0]) ** alpha, rel_tol=1e-9)


# --------------------------------------------------------------------------- hand-worked decoding
class FixedGraph:
    """A model stub whose graph pass returns fixed log-probabilities."""

    def __init__(self, token_lp, link_lp):
        self.token_lp, self.link_lp = token_lp, link_lp

    def forward_encoder(self, net_input):
        return {}

    def forward_graph(self, encoder_out, glance_tokens=None):
        return self.token_lp, self.link_lp


def hand_graph():
    """4 vertices over the words a, b, c (+ </s>).  Tokens: v0 'a' (0.9), v1 'b' (0.6), v2 'c' (0.95),
    v3 </s>.  Transitions from v0: v1 0.5, v2 0.3, v3 0.2; from v1: v2 0.1, v3 0.9; from v2: v3 1."""
    d = make_dictionary("a b c".split())
    a, b, c, eos = d.index("a"), d.index("b"), d.index("c"), d.eos()
    probs = torch.full((1, 4, len(d)), 1e-6)
    for v, (tok, p) in enumerate([(a, 0.9), (b, 0.6), (c, 0.95), (eos, 0.99)]):
        probs[0, v, tok] = p
        probs[0, v, a if tok != a else b] += 1 - p  # the rest on one other word
    link = torch.full((1, 4, 4), 0.0)
    link[0, 0, 1:] = torch.tensor([0.5, 0.3, 0.2])
    link[0, 1, 2:] = torch.tensor([0.1, 0.9])
    link[0, 2, 3] = 1.0
    with torch.no_grad():
        link_lp = link.log().masked_fill(~transition_mask(4, 0), -math.inf)
    return d, probs.log(), link_lp, (a, b, c)


def decode(mode, **kw):
    d, token_lp, link_lp, words = hand_graph()
    gen = DAGGenerator([FixedGraph(token_lp, link_lp)], d, DAGOptions(dag_decode=mode, **kw))
    hypo = gen.generate(None, {"net_input": {}})[0][0]
    return [d[t] for t in hypo["tokens"].tolist()], hypo


def test_greedy_and_lookahead_follow_the_hand_worked_paths():
    # greedy: v0 (a) → argmax E[0] = v1 (b) → argmax E[1] = v3 (</s>): "a b"
    assert decode("greedy")[0] == ["a", "b", "</s>"]
    # lookahead from v0: 0.5·0.6 = 0.30 (v1), 0.3·0.95 = 0.285 (v2), 0.2·0.99 = 0.198 (v3) → v1; then v3: "a b"
    assert decode("lookahead")[0] == ["a", "b", "</s>"]
    # viterbi, α = 0 (the most probable path): a→b→</s> .9·.5·.6·.9·.99 = .2405, a→c→</s> .9·.3·.95·1·.99 = .2539,
    # a→</s> .9·.2·.99 = .1782, a→b→c→</s> .0254: the path through c wins
    assert decode("viterbi", dag_length_alpha=0.0)[0] == ["a", "c", "</s>"]
    tokens, hypo = decode("beam", dag_beam=3, dag_length_alpha=0.0)
    assert tokens == ["a", "c", "</s>"]
    assert math.isclose(hypo["score"], math.log(0.9 * 0.3 * 0.95 * 1 * 0.99), rel_tol=1e-4)


@pytest.mark.parametrize("mode", DECODES)
def test_only_the_last_vertex_emits_end_of_sentence(mode):
    # the graph is trained on words + </s> with </s> at its last vertex: a first vertex that prefers
    # </s> (0.7) still emits its best word (a, 0.3 → score log 0.3), and the caption is never empty
    d, token_lp, link_lp, (a, b, c) = hand_graph()
    token_lp[0, 0] = math.log(1e-6)
    token_lp[0, 0, d.eos()], token_lp[0, 0, a] = math.log(0.7), math.log(0.3)
    token_lp[0, 3, b] = math.log(0.999)  # ... and the last vertex's </s> (0.99) is kept over a likelier word
    gen = DAGGenerator([FixedGraph(token_lp, link_lp)], d, DAGOptions(dag_decode=mode, dag_length_alpha=0.0))
    hypo = gen.generate(None, {"net_input": {}})[0][0]
    words = [d[t] for t in hypo["tokens"].tolist()]
    assert words[0] == "a" and words[-1] == "</s>" and "</s>" not in words[:-1] and len(words) >= 2
    assert math.isclose(hypo["positional_scores"][0].item(), math.log(0.3), rel_tol=1e-4)


def test_glancing_shows_round_lambda_d_target_tokens_at_their_path_vertices():
    d, token_lp, link_lp, (a, b, c) = hand_graph()
    seen = []

    class Recording(FixedGraph):
        num_updates = 0

        def forward_graph(self, encoder_out, glance_tokens=None):
            seen.append(glance_tokens)
            return self.token_lp, self.link_lp

    crit = DAGLossCriterion(SimpleNamespace(target_dictionary=d), glat_ratio=0.5)
    # target "c b </s>": its best path is v0 → v1 → v3 (through v2, b would cost 1e-6 more); the first
    # pass predicts a, b, </s> on it: d = 1 wrong token (v0), S = round(0.5 · 1) = 1 (half up)
    target = torch.tensor([[c, b, d.eos()]])
    torch.manual_seed(0)
    _, _, shown, distance = crit.glancing_pass(Recording(token_lp, link_lp), {"net_input": {}}, target,
                                               torch.tensor([3]), 0.5)
    assert distance == 1 and shown == 1
    glance = seen[-1][0].tolist()
    assert sum(t != d.pad() for t in glance) == 1  # one token shown ...
    shown_at = [v for v, t in enumerate(glance) if t != d.pad()][0]
    assert (shown_at, glance[shown_at]) in {(0, c), (1, b), (3, d.eos())}  # ... at its path vertex


# --------------------------------------------------------------------------- a tiny model, end to end
SIZES = ["--arch", "dag_caption_tiny", "--embed-dim", "64", "--ffn-embed-dim", "128", "--attention-heads", "4",
         "--encoder-layers", "1", "--decoder-layers", "2"]


def train_args(data, save, *extra):
    return [os.path.join(BIN, "fairseq-train"), str(data), "--user-dir", USER_DIR, "--task", "captioning",
            "--generator", "dag", *SIZES, "--criterion", "dag_loss", "--optimizer", "adam", "--lr", "2e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50", "--clip-norm", "1.0", "--batch-size", "32",
            "--num-workers", "0", "--valid-subset", "val", "--no-epoch-checkpoints", "--cpu", "--no-progress-bar",
            "--seed", "1", "--save-dir", str(save), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dag")
    generate(str(root / "toy"), ToyConfig(seed=6, n_images=(300, 20, 30), n_videos=(4, 2, 2)), log=lambda s: None)
    data = root / "toy" / "images"
    run_cli(train_args(data, root / "dag", "--max-update", "500", "--glat-ratio", "0.3"), env=ONE_THREAD)
    return data, root / "dag" / "checkpoint_last.pt"


def test_tiny_dag_beats_the_most_frequent_caption_through_fairseq_generate(trained):
    data, ckpt = trained
    p = run_cli([os.path.join(BIN, "fairseq-generate"), str(data), "--user-dir", USER_DIR, "--task", "captioning",
                 "--generator", "dag", "--path", str(ckpt), "--gen-subset", "test", "--batch-size", "16", "--cpu"],
                env=ONE_THREAD)
    hyps = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", p.stdout, re.M))
    refs = {}
    for r in read_manifest(str(data / "test.tsv")):
        refs.setdefault(r.item_id, []).append(r.caption)
    order = list(refs)
    assert sorted(map(int, hyps)) == list(range(len(order)))
    ours = coco_scores(refs, {order[int(i)]: h for i, h in hyps.items()}, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
    mfc = most_frequent_caption(read_manifest(str(data / "train.tsv")))
    floor = coco_scores(refs, {i: mfc for i in order}, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
    assert ours > floor + 0.1, (ours, floor)


@pytest.mark.parametrize("mode", ["greedy", "lookahead", "viterbi", "beam"])
def test_batch_one_equals_batched_in_every_decode_mode(trained, mode):
    data, ckpt = trained
    _, batched, single = decode_batched_and_single(
        str(data), ["--path", str(ckpt), "--generator", "dag", "--dag-decode", mode, "--cpu"], max_items=12,
        batch_size=10)
    assert len(single) == 12 and all(single[k] == batched[k] for k in single)
    assert all(c.strip() for c in batched.values())


def test_a_graph_smaller_than_a_target_is_one_clear_error(trained, tmp_path):
    data, _ = trained
    p = run_cli(train_args(data, tmp_path / "small", "--graph-size", "4", "--max-update", "1"), env=ONE_THREAD,
                check=False)
    assert_one_line(p, "fairseq-train", "train.tsv: item", "target tokens (words + </s>) do not fit the graph's 4 "
                    "vertices: raise --graph-size")
