"""NARVL (Shi et al.): Query-CTC (Eq. 1) against a direct dynamic programme, infeasible
targets counted and refused, CTC collapse and prefix beam search on hand-made / brute-force
cases, the OFA-style encoder's token counts (ResNet grid, EfficientNet-Lite0), the OFA
checkpoint mapping, batch-1 == batched decoding (NARVL ctc and the AR counterpart with
fairseq's beam search), and a tiny NARVL trained through fairseq-train that beats the
majority answer on toy VQA through fairseq-generate."""
import itertools
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from conftest import BIN, REPO, USER_DIR, run_cli
from fairseq_nar_caption.criterions.query_ctc import QueryCTCCriterion
from fairseq_nar_caption.models.narvl import ctc_min_positions
from fairseq_nar_caption.errors import DataError
from fairseq_nar_caption.data.toy import ToyConfig, generate
from fairseq_nar_caption.generators.ctc import collapse, prefix_beam_search
from fairseq_nar_caption.models.modules.ofa_encoder import EfficientNetLite0Backbone, map_ofa_encoder_state
from fairseq_nar_caption.models.narvl import NARVLARModel, NARVLConfig, NARVLModel, NARVLModelConfig
from fairseq_nar_caption.tasks.vision_language import VisionLanguageConfig, VisionLanguageTask

sys.path.insert(0, os.path.join(REPO, "scripts"))
import prepare_vl_toy  # noqa: E402

BINS = 16


@pytest.fixture(scope="module")
def vl_data(tmp_path_factory):
    """A small toy benchmark (400 train images) turned into a VL folder."""
    root = tmp_path_factory.mktemp("narvl")
    generate(str(root / "toy"), ToyConfig(seed=4, n_images=(400, 20, 60), n_videos=(2, 1, 1)), log=lambda s: None)
    prepare_vl_toy.build(str(root / "toy" / "images"), str(root / "vl"), 400, BINS)
    return root / "vl"


def make_task(data, vl_task="vqa"):
    cfg = VisionLanguageConfig(data=str(data), vl_task=vl_task, image_dir="../toy/images/pixels",
                               patch_image_size=96, num_bins=BINS, max_source_positions=256, max_target_positions=32)
    return VisionLanguageTask.setup_task(cfg)


def ctc_generator(task, model):
    """--generator ctc as fairseq-generate builds it (the task's options and generator context)."""
    task.cfg.generator = "ctc"
    return task.build_generator([model], SimpleNamespace())


def model_cfg(cls=NARVLModelConfig, **kw):
    base = dict(embed_dim=32, ffn_embed_dim=64, attention_heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0,
                attention_dropout=0.0, resnet_layers="1,1,1", resnet_width=8, max_text_positions=40,
                patch_image_size=96, max_source_positions=256, max_target_positions=32)
    base.update(kw)
    return cls(**base)


# ----------------------------------------------------------------------------- Query-CTC (Eq. 1)
def ctc_dp(lprobs, target, blank):
    """−log Σ over alignments, by the textbook α recursion over the blank-extended label."""
    ext = [blank]
    for y in target:
        ext += [y, blank]
    alpha = [-math.inf] * len(ext)
    alpha[0] = float(lprobs[0, blank])
    if len(ext) > 1:
        alpha[1] = float(lprobs[0, ext[1]])
    for t in range(1, lprobs.size(0)):
        new = [-math.inf] * len(ext)
        for s in range(len(ext)):
            cands = [alpha[s]] + ([alpha[s - 1]] if s >= 1 else [])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                cands.append(alpha[s - 2])
            m = max(cands)
            if m > -math.inf:
                new[s] = m + math.log(sum(math.exp(c - m) for c in cands)) + float(lprobs[t, ext[s]])
        alpha = new
    ends = [alpha[-1]] + ([alpha[-2]] if len(ext) > 1 else [])
    m = max(ends)
    return math.inf if m == -math.inf else -(m + math.log(sum(math.exp(e - m) for e in ends)))


class _Dict:
    def __init__(self, n):
        self.indices = {"<blank>": n - 1}

    def index(self, s):
        return self.indices[s]

    def pad(self):
        return 1

    def eos(self):
        return 2


class _StubModel(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **net_input):
        return self.logits, {"padding_mask": None}

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return torch.log_softmax(net_output[0], -1)


def test_query_ctc_equals_direct_dynamic_programme_and_counts_infeasible_targets():
    torch.manual_seed(0)
    V, N = 7, 6
    blank = V - 1
    logits = torch.randn(4, N, V)
    # targets (without </s>): plain, with a repeat (needs a blank), single token, infeasible (4 + 3 repeats > 6)
    tgts = [[3, 4, 5], [3, 3, 4], [5], [4, 4, 4, 4]]
    pad, eos = 1, 2
    T = max(len(t) for t in tgts) + 1
    target = torch.full((4, T), pad)
    for i, t in enumerate(tgts):
        target[i, : len(t) + 1] = torch.tensor(t + [eos])
    crit = QueryCTCCriterion(SimpleNamespace(target_dictionary=_Dict(V)))
    loss, sample_size, log = crit(_StubModel(logits), {"net_input": {}, "target": target})
    lp = torch.log_softmax(logits, -1)
    want = [ctc_dp(lp[i], t, blank) for i, t in enumerate(tgts)]
    assert math.isinf(want[3]) and ctc_min_positions(tgts[3]) == 7
    assert log["infeasible"] == 1  # counted, not silently zeroed into the loss
    assert loss.item() == pytest.approx(sum(want[:3]), rel=1e-5)
    assert sample_size == 3 + 3 + 1
    nll = crit.ctc_nll(lp[1:2], torch.tensor([[3, 3, 4]]), torch.tensor([3]), torch.tensor([N]))
    assert nll.item() == pytest.approx(want[1], rel=1e-5)


def test_ce_ablation_is_positionwise_with_blanks_after_the_target():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 7)
    crit = QueryCTCCriterion(SimpleNamespace(target_dictionary=_Dict(7)), loss="ce")
    loss, _, log = crit(_StubModel(logits), {"net_input": {}, "target": torch.tensor([[3, 3, 2]])})
    lp = torch.log_softmax(logits, -1)[0]
    assert loss.item() == pytest.approx(-(lp[0, 3] + lp[1, 3] + lp[2, 6] + lp[3, 6]).item(), rel=1e-5)


def test_ctc_min_positions():
    assert ctc_min_positions([1, 2, 3]) == 3
    assert ctc_min_positions([1, 1, 2, 2]) == 6
    assert ctc_min_positions([5, 5, 5, 5]) == 7


# ----------------------------------------------------------------------------- collapse and beam search
def test_collapse_hand_made():
    b = 0
    tokens = torch.tensor([[5, 5, b, 5, 7, 7, b],
                           [b, b, b, b, b, b, b],
                           [3, 4, 4, b, b, 4, 3]])
    assert collapse(tokens, b) == [[5, 5, 7], [], [3, 4, 4, 3]]
    assert collapse(tokens, b, merge_repeats=False) == [[5, 5, 5, 7, 7], [], [3, 4, 4, 4, 3]]


def test_prefix_beam_search_matches_brute_force():
    torch.manual_seed(2)
    N, V, blank = 4, 4, 0
    lp = torch.log_softmax(torch.randn(N, V), -1)
    totals = {}
    for path in itertools.product(range(V), repeat=N):
        label = tuple(collapse(torch.tensor([path]), blank)[0])
        totals[label] = totals.get(label, 0.0) + math.exp(sum(float(lp[t, s]) for t, s in enumerate(path)))
    best_label, best_p = max(totals.items(), key=lambda kv: kv[1])
    got = prefix_beam_search(lp, blank, beam=V ** N)  # a beam that never prunes: exact
    assert got[0][0] == best_label
    assert math.exp(got[0][1]) == pytest.approx(best_p, rel=1e-6)
    for label, logp in got:
        assert math.exp(logp) == pytest.approx(totals[label], rel=1e-6)


# ----------------------------------------------------------------------------- encoder
def test_resnet_grid_and_efficientnet_lite0_token_counts(vl_data):
    task = make_task(vl_data)
    model = NARVLModel.build_model(model_cfg(num_queries=6), task).eval()
    ds_sample = [task_sample(task, "vqa", "test", [0, 1])]
    out = model.forward_encoder(ds_sample[0]["net_input"])
    t = ds_sample[0]["net_input"]["src_tokens"].size(1)
    assert out["encoder_out"][0].shape == (6 * 6 + t, 2, 32)  # 96 / 16 = 6: a 6x6 grid, then the prompt
    assert model.encoder.num_image_tokens == 36
    eff = EfficientNetLite0Backbone(pretrained=True).eval()
    with torch.no_grad():
        assert eff(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)  # 49 tokens
        assert eff(torch.zeros(1, 3, 96, 96)).shape == (1, 1280, 3, 3)  # 9 tokens
    # the pretrained weights are ImageNet's, not a fresh initialisation
    fresh = EfficientNetLite0Backbone(pretrained=False)
    assert not torch.equal(fresh.net._conv_stem.weight, eff.net._conv_stem.weight)
    m2 = NARVLModel.build_model(model_cfg(num_queries=6, backbone="efficientnet-lite0"), task).eval()
    assert m2.encoder.num_image_tokens == 9


def test_ofa_checkpoint_mapping(tmp_path, vl_data):
    task = make_task(vl_data)
    model = NARVLModel.build_model(model_cfg(num_queries=6), task)
    ours = model.encoder.state_dict()
    g = torch.Generator().manual_seed(0)
    ofa = {}
    for k, v in ours.items():  # OFA's names and shapes for the same sizes
        if k.startswith("backbone.net."):
            name = "encoder.embed_images." + k[len("backbone.net."):]
        else:
            name = "encoder." + k
        shape = (v.shape[0] + 2, v.shape[1]) if k == "embed_positions.weight" else v.shape
        ofa[name] = torch.randn(shape, generator=g) if v.is_floating_point() else v.clone()
    ofa["encoder.layers.0.attn_ln.weight"] = torch.ones(32)  # NormFormer extra: no counterpart
    ofa["encoder.pos_q_linear.weight"] = torch.ones(32, 32)
    ofa["decoder.layers.0.fc1.weight"] = torch.ones(3)  # decoder weights are not the encoder's
    mapped, dropped = map_ofa_encoder_state(ofa, ours)
    assert set(dropped) == {"layers.0.attn_ln.weight", "pos_q_linear.weight"}
    assert torch.equal(mapped["backbone.net.layer3.0.conv2.weight"], ofa["encoder.embed_images.layer3.0.conv2.weight"])
    assert torch.equal(mapped["embed_positions.weight"], ofa["encoder.embed_positions.weight"][2:])
    path = tmp_path / "ofa.pt"
    torch.save({"model": ofa}, path)
    model.cfg.ofa_checkpoint = str(path)
    model.init_from_pretrained()
    assert torch.equal(model.encoder.image_proj.weight, ofa["encoder.image_proj.weight"])
    assert torch.equal(model.encoder.layers[0].self_attn.k_proj.weight, ofa["encoder.layers.0.self_attn.k_proj.weight"])
    bad = dict(ofa)
    bad["encoder.image_proj.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError, match="image_proj.weight"):
        map_ofa_encoder_state(bad, ours)


# ----------------------------------------------------------------------------- task and decoding
def task_sample(task, vl_task, split, indices):
    task.load_dataset(split)
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in indices])


def test_task_refuses_too_few_queries_naming_file_and_row(vl_data):
    task = make_task(vl_data, "grounding")
    task.load_dataset("train")
    need = max(ctc_min_positions(t.tolist()[:-1]) for t in task.dataset("train").targets)
    assert need >= 4
    with pytest.raises(DataError, match=r"grounding_train.tsv: row \d+ \(id [^)]+\): target needs"):
        task.build_model(_fairseq_cfg(need - 1))  # the task checks the loaded training split at build
    task.build_model(_fairseq_cfg(need))  # enough queries: accepted


def _fairseq_cfg(n):
    from omegaconf import OmegaConf
    cfg = OmegaConf.structured(model_cfg(num_queries=n))
    cfg._name = "narvl"
    return cfg


def test_eval_rows_keep_file_order_and_every_row(vl_data):
    task = make_task(vl_data, "vqa")
    task.load_dataset("test")
    ds = task.dataset("test")
    lines = open(task.split_path("test")).read().splitlines()
    assert [r.uniq_id for r in ds.rows] == [ln.split("\t")[0] for ln in lines]
    it = task.get_batch_iterator(ds, max_sentences=16, required_batch_size_multiple=8).next_epoch_itr(shuffle=False)
    ids = [int(i) for b in it for i in b["id"]]
    assert ids == list(range(len(ds)))  # 120 rows: nothing dropped by a partial last batch


def test_ctc_batch_of_one_equals_batched(vl_data):
    torch.manual_seed(3)
    task = make_task(vl_data, "vqa")
    model = NARVLModel.build_model(model_cfg(num_queries=6), task).eval()
    for p in model.parameters():  # a random but decisive model: outputs vary per item
        p.data.normal_(0, 0.5)
    idx = list(range(8))
    sample = task_sample(task, "vqa", "test", idx)
    assert sample["net_input"]["src_tokens"].eq(task.dictionary.pad()).any()  # prompts of different lengths
    for beam in (1, 3):
        task.cfg.ctc_beam = beam
        gen = ctc_generator(task, model)
        batched = gen.generate([model], sample)
        outs = set()
        for j, i in enumerate(idx):
            one = gen.generate([model], task_sample(task, "vqa", "test", [i]))[0][0]
            assert torch.equal(one["tokens"], batched[j][0]["tokens"])
            assert one["score"] == pytest.approx(batched[j][0]["score"], abs=1e-4)  # a float, as every generator
            outs.add(round(one["score"], 3))
        assert len(outs) > 1  # the items' inputs matter (scores differ)
    task.cfg.ctc_beam = 1


def test_ar_counterpart_batch_of_one_equals_batched_with_fairseq_beam_search(vl_data):
    torch.manual_seed(4)
    task = make_task(vl_data, "vqa")
    model = NARVLARModel.build_model(model_cfg(NARVLConfig), task).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    gen = SequenceGenerator([model], task.dictionary, beam_size=3, max_len_b=5)
    idx = list(range(6))
    batched = gen.generate([model], task_sample(task, "vqa", "test", idx))
    for j, i in enumerate(idx):
        one = gen.generate([model], task_sample(task, "vqa", "test", [i]))[0][0]
        assert torch.equal(one["tokens"], batched[j][0]["tokens"])


# ----------------------------------------------------------------------------- trained end to end
COMMON = ["--task", "vision_language", "--vl-task", "vqa", "--image-dir", "../toy/images/pixels",
          "--patch-image-size", "96", "--num-bins", str(BINS)]


@pytest.fixture(scope="module")
def trained_vqa(vl_data, tmp_path_factory):
    """A tiny NARVL trained on the small toy VQA through fairseq-train (Query-CTC, N = 6)."""
    save = tmp_path_factory.mktemp("narvl_ckpt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_cli([os.path.join(BIN, "fairseq-train"), str(vl_data), "--user-dir", USER_DIR, *COMMON, "--cpu",
                    "--arch", "narvl_tiny",
                    "--num-queries", "6", "--criterion", "query_ctc", "--optimizer", "adam", "--lr", "2e-3",
                    "--batch-size", "32", "--max-update", "150", "--save-dir", str(save), "--num-workers", "0",
                    "--disable-validation", "--no-epoch-checkpoints", "--no-progress-bar", "--seed", "1"],
                   env=env)
    return save / "checkpoint_last.pt"


def test_tiny_narvl_beats_majority_answer_on_vqa_through_fairseq(vl_data, trained_vqa):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    gen = run_cli([os.path.join(BIN, "fairseq-generate"), str(vl_data), "--user-dir", USER_DIR, *COMMON,
                          "--cpu", "--path", str(trained_vqa), "--gen-subset", "test", "--generator", "ctc",
                          "--batch-size", "32", "--post-process", "sentencepiece"],
                         env=env).stdout
    hyps = {int(ln.split("\t")[0][2:]): ln.split("\t")[2] if ln.count("\t") >= 2 else ""
            for ln in gen.splitlines() if ln.startswith("D-")}
    rows = [ln.split("\t") for ln in open(vl_data / "vqa_test.tsv").read().splitlines()]
    gold = [r[3].split("|!+")[1] for r in rows]
    assert sorted(hyps) == list(range(len(rows)))  # every row, sample id = row index
    train = [ln.split("\t")[3].split("|!+")[1] for ln in open(vl_data / "vqa_train.tsv").read().splitlines()]
    majority = max(set(train), key=train.count)
    base = sum(g == majority for g in gold) / len(gold)
    acc = sum(hyps[i].strip() == g for i, g in enumerate(gold)) / len(gold)
    print(f"toy VQA accuracy {acc:.3f}, majority answer {majority!r} {base:.3f}")
    assert acc > base + 0.05, (acc, base)


def test_benchmark_hook_and_distillation_with_the_trained_model(vl_data, trained_vqa, tmp_path):
    from fairseq_nar_caption.cli import benchmark, distill_vl

    gen_args = [*COMMON, "--path", str(trained_vqa), "--generator", "ctc"]
    rows, _ = benchmark.benchmark(str(vl_data), "test", [("NARVL", gen_args)], warmup=2, max_items=12,
                                  throughput_batch=0, log=lambda m: None)
    assert set(rows[0]["scores"]) == {"vqa_accuracy"} and rows[0]["n_items"] == 12
    assert rows[0]["decoder_passes"] == 1  # one pass over the queries
    assert benchmark.markdown_table(rows).startswith("| configuration | vqa_accuracy | latency ms (median [IQR])")
    out, outputs = distill_vl.distill_vl(str(vl_data), str(trained_vqa), "vqa", split="test",
                                         out_split="test_distilltest", batch_size=32, generate_args=COMMON[4:] + [
                                             "--generator", "ctc"])
    lines = open(out).read().splitlines()
    src = open(vl_data / "vqa_test.tsv").read().splitlines()
    assert len(lines) == len(src)
    for a, b in zip(lines, src):
        a, b = a.split("\t"), b.split("\t")
        assert a[:3] == b[:3] and a[4:] == b[4:]
        assert a[3] == "1.0|!+" + outputs[a[0]]
    os.unlink(out)


def test_decoder_input_encoder_variant_trains_with_query_ctc(vl_data):
    """Tables 6-7: the decoder input is the encoder output (N = image + prompt tokens, padding masked)."""
    torch.manual_seed(5)
    task = make_task(vl_data, "vqa")
    model = NARVLModel.build_model(model_cfg(decoder_input="encoder"), task)
    assert model.num_output_positions is None
    sample = task_sample(task, "vqa", "test", list(range(4)))
    logits, extra = model(**sample["net_input"])
    t = sample["net_input"]["src_tokens"].size(1)
    assert logits.shape[:2] == (4, 36 + t)
    assert torch.equal(extra["padding_mask"][:, 36:], sample["net_input"]["src_tokens"].eq(task.dictionary.pad()))
    crit = QueryCTCCriterion(task)
    loss, _, log = crit(model, sample)
    assert torch.isfinite(loss) and log["infeasible"] == 0
    loss.backward()
    model.eval()
    gen = ctc_generator(task, model)
    assert all(h[0]["tokens"][-1] == task.dictionary.eos() for h in gen.generate([model], sample))


def test_grounding_decodes_exactly_four_coordinates_when_ctc_merges_equal_bins(vl_data):
    task = make_task(vl_data, "grounding")
    d = task.dictionary
    bins = task.bin_token_ids()
    frames = [bins[5], bins[5], bins[9], bins[2], d.index("<blank>")]  # argmax + collapse would give 3 bins
    lp = torch.full((1, len(frames), len(d)), -10.0)
    for t, s in enumerate(frames):
        lp[0, t, s] = -0.01

    class Stub(torch.nn.Module):
        num_output_positions = len(frames)

        def forward_encoder(self, net_input):
            return {}

        def forward_decoder(self, encoder_out):
            return lp.clone(), None

    gen = ctc_generator(task, Stub())
    assert collapse(lp.argmax(-1), d.index("<blank>")) == [[bins[5], bins[9], bins[2]]]
    hyp = gen.generate(None, {"net_input": {}})[0][0]
    assert hyp["tokens"].tolist() == [bins[5], bins[5], bins[9], bins[2], d.eos()]
    text = task.post_process_hypothesis(d.string(hyp["tokens"], extra_symbols_to_ignore={d.eos()}))
    assert text == "<bin_5><bin_5><bin_9><bin_2>"


# ----------------------------------------------------------------------------- grounding and entailment
QUERIES = {"grounding": 7, "entailment": 2}  # grounding: 4 bins + up to 3 blanks between equal neighbours
UPDATES = {"grounding": 400, "entailment": 200}  # boxes learn slower: 400 clears the margin on every seed tried


def centre_box_mean_iou(data, split_rows, width=96, height=96):
    """The trivial grounding baseline: a box of the mean training size at the image centre."""
    from fairseq_nar_caption.data.boxes import iou
    from fairseq_nar_caption.data.ofa_tsv import read_ofa_tsv

    boxes = [[float(v) for v in r["box"].split(",")] for r in read_ofa_tsv(str(data / "grounding_train.tsv"),
                                                                            "grounding")]
    w = sum(b[2] - b[0] for b in boxes) / len(boxes)
    h = sum(b[3] - b[1] for b in boxes) / len(boxes)
    centre = [width / 2 - w / 2, height / 2 - h / 2, width / 2 + w / 2, height / 2 + h / 2]
    gold = [[float(v) for v in r["box"].split(",")] for r in split_rows]
    return sum(iou(centre, g) for g in gold) / len(gold)


@pytest.mark.parametrize("vl_task", ["grounding", "entailment"])
def test_tiny_narvl_beats_trivial_baselines_on_grounding_and_entailment(vl_data, vl_task, tmp_path):
    """Trained with fairseq-train (Query-CTC), decoded with fairseq-generate (ctc), scored with score_vl."""
    from fairseq_nar_caption.cli.score_vl import score_vl
    from fairseq_nar_caption.data.ofa_tsv import read_ofa_tsv

    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--task", "vision_language", "--vl-task", vl_task, "--image-dir", "../toy/images/pixels",
            "--patch-image-size", "96", "--num-bins", str(BINS), "--cpu"]
    run_cli([os.path.join(BIN, "fairseq-train"), str(vl_data), "--user-dir", USER_DIR, *args,
                    "--arch", "narvl_tiny", "--num-queries", str(QUERIES[vl_task]), "--criterion", "query_ctc",
                    "--optimizer", "adam", "--lr", "2e-3", "--batch-size", "32", "--max-update", str(UPDATES[vl_task]),
                    "--save-dir", str(tmp_path), "--num-workers", "0", "--disable-validation",
                    "--no-epoch-checkpoints", "--no-progress-bar", "--seed", "1"], env=env)
    gen = tmp_path / "gen.txt"
    with open(gen, "w") as f:
        run_cli([os.path.join(BIN, "fairseq-generate"), str(vl_data), "--user-dir", USER_DIR, *args,
                        "--path", str(tmp_path / "checkpoint_last.pt"), "--gen-subset", "test", "--generator",
                        "ctc", "--batch-size", "32", "--post-process", "sentencepiece"],
                       env=env, stdout=f, stderr=subprocess.DEVNULL)
    tsv = str(vl_data / f"{vl_task}_test.tsv")
    result = score_vl(vl_task, tsv, str(gen), image_dir=str(vl_data / "../toy/images/pixels"), num_bins=BINS)
    rows = read_ofa_tsv(tsv, vl_task)
    if vl_task == "grounding":  # mean IoU: Acc@0.5 counts only a few hits on 60 small test images
        assert result["malformed"] == 0  # always exactly four coordinates
        score, base = result["scores"]["mean_iou"], centre_box_mean_iou(vl_data, rows)
        margin = 0.5 * base  # at least 1.5x the centre box's mean IoU
    else:
        train = [r["label"] for r in read_ofa_tsv(str(vl_data / "entailment_train.tsv"), "entailment")]
        majority = max(set(train), key=train.count)
        score, base = result["scores"]["accuracy"], sum(r["label"] == majority for r in rows) / len(rows)
        margin = 0.05
    print(f"toy {vl_task}: {score:.3f} vs trivial baseline {base:.3f}")
    assert score > base + margin, (score, base)


# ----------------------------------------------------------------------------- SCST on the caption task
def _uneven_caption_split(vl_data, name):
    """caption_<name>.tsv: the training rows (one per caption) of the first 40 images, every row of the
    first 10 and one row of each other: images with different numbers of rows."""
    rows = [ln.split("\t") for ln in open(vl_data / "caption_train.tsv").read().splitlines()]
    images = list(dict.fromkeys(r[1] for r in rows))[:40]
    kept, seen = [], set()
    for r in rows:
        if r[1] in images and (images.index(r[1]) < 10 or r[1] not in seen):
            kept.append(r)
            seen.add(r[1])
    (vl_data / f"caption_{name}.tsv").write_text("".join("\t".join(r) + "\n" for r in kept))
    refs = {}
    for r in kept:
        refs.setdefault(r[1], []).append(r[2])
    return kept, refs


def test_caption_task_gives_scst_every_caption_of_the_image_counted_once(vl_data):
    """The reward's references of a training row are all captions of its image; with the rows of 40
    images (10 with all their rows, 30 with one) the reward equals pycocoevalcap's per-item CIDEr-D over
    one document per image — not the document frequencies of one per row."""
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    from fairseq_nar_caption.criterions.self_critical import CaptionReward
    from fairseq_nar_caption.evaluation.coco_metrics import CorpusCiderD

    kept, by_image = _uneven_caption_split(vl_data, "train_uneven")
    try:
        task = make_task(vl_data, "caption")
        refs = task.reward_references("train_uneven")
        assert refs == {r[0]: by_image[r[1]] for r in kept}
        assert len({id(v) for v in refs.values()}) == len(by_image) == 40  # one shared list per image
        assert max(len(v) for v in by_image.values()) > 1 == min(len(v) for v in by_image.values())
        reward = CaptionReward(task, "train_uneven")
        rng = np.random.default_rng(2)
        words = sorted({w for v in by_image.values() for c in v for w in c.split()})
        hyps = {img: v[0] if k % 2 else " ".join(rng.choice(words, size=5)) for k, (img, v) in enumerate(by_image.items())}
        first_row = {r[1]: r[0] for r in reversed(kept)}
        ours = reward(list(hyps.values()), [first_row[i] for i in hyps])
        _, theirs = Cider().compute_score(by_image, {i: [h] for i, h in hyps.items()})
        assert ours == pytest.approx(np.asarray(theirs), rel=1e-9, abs=1e-12)
        per_row = CorpusCiderD([by_image[r[1]] for r in kept]).scores(list(hyps.values()), list(by_image.values()))
        assert not np.allclose(per_row, ours)  # a document per row would weigh the 10 full images more
    finally:
        os.unlink(vl_data / "caption_train_uneven.tsv")


def test_eval_cider_and_scst_outside_the_caption_task_are_refused(vl_data):
    from fairseq_nar_caption.errors import OptionError

    with pytest.raises(OptionError, match="self-critical training scores captions against references: --vl-task "
                                          "caption \\(this task is --vl-task vqa\\)"):
        make_task(vl_data, "vqa").reward_references("train")
    cfg = VisionLanguageConfig(data=str(vl_data), vl_task="grounding", image_dir="../toy/images/pixels",
                               patch_image_size=96, num_bins=BINS, eval_cider=True)
    with pytest.raises(OptionError, match="--eval-cider scores captions .* --vl-task grounding"):
        VisionLanguageTask.setup_task(cfg)


def test_scst_fine_tunes_narvl_and_its_ar_counterpart_on_the_caption_task(vl_data, tmp_path):
    """Through fairseq-train: Query-CTC then SCST (alignments sampled per query) for NARVL, cross-entropy
    then SCST (fairseq's sampling) for the AR counterpart; each SCST stage logs its reward, validates by
    the caption task's CIDEr-D and moves the weights."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--task", "vision_language", "--vl-task", "caption", "--image-dir", "../toy/images/pixels",
            "--patch-image-size", "96", "--num-bins", str(BINS), "--cpu", "--optimizer", "adam", "--batch-size", "16",
            "--num-workers", "0", "--valid-subset", "val", "--no-epoch-checkpoints", "--no-progress-bar", "--seed", "1"]
    for arch, model, xe in (("narvl_tiny", ["--num-queries", "24", "--generator", "ctc"], "query_ctc"),
                            ("narvl_ar_tiny", [], "label_smoothed_cross_entropy")):
        stage1 = tmp_path / arch / "xe"
        run_cli([os.path.join(BIN, "fairseq-train"), str(vl_data), "--user-dir", USER_DIR, *args, "--arch", arch,
                 *model, "--criterion", xe, "--lr", "2e-3", "--max-update", "20", "--disable-validation",
                 "--save-dir", str(stage1)], env=env)
        stage2 = tmp_path / arch / "scst"
        out = run_cli([os.path.join(BIN, "fairseq-train"), str(vl_data), "--user-dir", USER_DIR, *args, "--arch", arch,
                       *model, "--criterion", "scst", "--num-samples", "2", "--lr", "1e-4", "--max-update", "3",
                       "--finetune-from-model", str(stage1 / "checkpoint_last.pt"), "--eval-cider",
                       "--eval-cider-args", '{"max_len_b": 12}', "--best-checkpoint-metric", "cider",
                       "--maximize-best-checkpoint-metric", "--log-interval", "1", "--log-format", "simple",
                       "--save-dir", str(stage2)], env=env)
        log = out.stdout + out.stderr
        assert "reward" in log and "| cider " in log, log[-2000:]
        before = torch.load(stage1 / "checkpoint_last.pt", weights_only=True)["model"]
        after = torch.load(stage2 / "checkpoint_last.pt", weights_only=True)["model"]
        assert any(not torch.equal(before[k], after[k]) for k in before)
