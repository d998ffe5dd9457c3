"""The AR baseline end to end: fairseq-train → checkpoint → fairseq-generate → scorer,
incremental decoding, batch invariance, the benchmark harness and distillation.

A tiny model learns a synthetic task (colour and shape read off two feature
dimensions), trained once through the fairseq-train CLI for the whole module.
"""
import json
import os

import numpy as np
import pytest
import torch

from conftest import BIN, USER_DIR, run_cli, write_h5, write_tsv
from fairseq_nar_caption import inference
from fairseq_nar_caption.cli import benchmark, distill, score
from fairseq_nar_caption.data.manifest import read_manifest, write_coco_refs

COLOURS, SHAPES = ["red", "blue", "green"], ["circle", "square", "star"]


def caption_of(c, s, size):
    return f"a {size} {COLOURS[c]} {SHAPES[s]}" if size else f"a {COLOURS[c]} {SHAPES[s]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("ar_data")
    rng = np.random.default_rng(0)
    feats, caps = {}, {}
    for i in range(150):
        c, s, big = rng.integers(0, 3), rng.integers(0, 3), rng.integers(0, 2)
        x = rng.normal(scale=0.3, size=(5, 8)).astype("float32")
        x[:, c] += 2.0
        x[:, 3 + s] += 2.0
        x[:, 6] += 2.0 * big
        feats[str(i)] = x
        caps[str(i)] = [caption_of(c, s, "big" if big else "small"), caption_of(c, s, "")]
    write_h5(data / "features.h5", feats)
    for split, ids in [("train", range(0, 120)), ("val", range(120, 135)), ("test", range(135, 150))]:
        write_tsv(data / f"{split}.tsv", [(str(i), c) for i in ids for c in caps[str(i)]])
    words = sorted({w for cs in caps.values() for c in cs for w in c.split()})
    (data / "dict.txt").write_text("".join(f"{w} 1\n" for w in words))
    save = data / "ckpt"
    cmd = [os.path.join(BIN, "fairseq-train"), str(data), "--user-dir", USER_DIR, "--task", "captioning",
           "--arch", "ar_caption_tiny", "--embed-dim", "64", "--ffn-embed-dim", "128", "--encoder-layers", "1",
           "--decoder-layers", "1", "--dropout", "0.0", "--attention-dropout", "0.0",
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "16", "--max-epoch", "12",
           "--num-workers", "0", "--valid-subset", "val", "--no-epoch-checkpoints", "--save-dir", str(save),
           "--seed", "1", "--cpu", "--no-progress-bar"]
    run_cli(cmd)
    return data, save / "checkpoint_best.pt", caps


def test_train_generate_score_round_trip_through_cli(trained, tmp_path):
    data, ckpt, caps = trained
    out = run_cli([os.path.join(BIN, "fairseq-generate"), str(data), "--user-dir", USER_DIR,
                   "--task", "captioning", "--path", str(ckpt), "--gen-subset", "test", "--beam", "5",
                   "--max-len-b", "10", "--batch-size", "4", "--cpu"], env={**os.environ}).stdout
    gen = tmp_path / "gen.txt"
    gen.write_text(out)
    hyps = {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in out.splitlines() if line.startswith("H-")}
    assert sorted(hyps) == list(range(15))
    test_ids = [str(i) for i in range(135, 150)]
    correct = sum(hyps[k] in caps[test_ids[k]] for k in hyps)
    assert correct >= 12, f"only {correct}/15 test captions correct: {hyps}"
    # the scorer maps sample ids back to items through the manifest
    refs = tmp_path / "refs.json"
    write_coco_refs(str(refs), read_manifest(str(data / "test.tsv")))
    res = score.score_files(refs=str(refs), generate_output=str(gen), manifest=str(data / "test.tsv"),
                            metrics=("Bleu", "CIDEr-D"))
    assert res["num_images"] == 15 and res["scores"]["CIDEr-D"] > 2.0  # near-perfect captions on this task


def test_trained_checkpoint_loads_with_weights_only(trained):
    _, ckpt, _ = trained
    state = torch.load(ckpt, weights_only=True)
    assert "model" in state and state["cfg"]["model"]["_name"] == "ar_caption_tiny"


def _load(trained, *args):
    data, ckpt, _ = trained
    loaded = inference.load(str(data), ["--path", str(ckpt), "--max-len-b", "10", "--cpu", *args])
    loaded.task.load_dataset("test")
    return loaded, loaded.task.dataset("test")


def test_incremental_greedy_equals_full_recompute(trained):
    loaded, ds = _load(trained, "--beam", "1")
    model, d = loaded.models[0], loaded.task.target_dictionary
    sample = ds.collater([ds[i] for i in range(len(ds))])
    fairseq_out = [h[0]["tokens"].tolist() for h in loaded.task.inference_step(loaded.generator, [model], sample)]
    # a decode loop with no cache: recompute the whole prefix each step
    with torch.no_grad():
        enc = model.forward_encoder(sample["net_input"])
        prev = torch.full((len(ds), 1), d.eos())
        done = torch.zeros(len(ds), dtype=torch.bool)
        for _ in range(11):
            logits, _ = model.decoder(prev, encoder_out=enc)
            nxt = logits[:, -1].argmax(-1).masked_fill(done, d.pad())
            prev = torch.cat([prev, nxt[:, None]], 1)
            done |= nxt.eq(d.eos())
    manual = [[t for t in row[1:] if t != d.pad()] for row in prev.tolist()]
    manual = [m[: m.index(d.eos()) + 1] if d.eos() in m else m for m in manual]
    assert fairseq_out == manual


def test_batch1_equals_batched_beam5(trained):
    loaded, ds = _load(trained, "--beam", "5")
    batched = inference.decode_dataset(loaded, ds, batch_size=len(ds))
    single = inference.decode_dataset(loaded, ds, batch_size=1)
    assert batched == single and len(single) == 15


def test_benchmark_harness(trained, tmp_path):
    data, ckpt, _ = trained
    rows, _ = benchmark.main([str(data), "--row", f"beam5=--path {ckpt} --beam 5 --max-len-b 10",
                              "--row", f"greedy=--path {ckpt} --beam 1 --max-len-b 10", "--warmup", "3",
                              "--ar-rows", "beam5,greedy", "--compare", "greedy",
                              "--passes", "2", "--throughput-batch", "8", "--metrics", "Bleu,CIDEr-D",
                              "--out-json", str(tmp_path / "b.json"), "--out-md", str(tmp_path / "b.md"),
                              "--out-png", str(tmp_path / "b.png")])
    j = json.load(open(tmp_path / "b.json"))
    assert [r["name"] for r in j["rows"]] == ["beam5", "greedy"]
    # the best AR row (here the better of the two) is the reference of the speed-ups and percentages
    best = max(j["rows"], key=lambda r: (r["scores"]["CIDEr-D"], r["name"] == "beam5"))
    assert j["environment"]["best_ar"] == j["environment"]["baseline"] == best["name"]
    assert best["speedup"] == 1.0 and best["quality_pct"] == pytest.approx(100.0)
    assert j["rows"][1]["vs"]["greedy"]["speedup"] == 1.0 and j["rows"][1]["vs"]["greedy"]["throughput_ratio"] == 1.0
    # 15 items, 3 warm-up items in the first pass only: 12 + 15 timed decodes
    assert all(r["latency"]["timed_items"] == 27 and r["n_items"] == 15 for r in j["rows"])
    assert all(r["throughput"] > 0 and r["latency"]["q1_ms"] <= r["latency"]["median_ms"] <= r["latency"]["q3_ms"]
               for r in j["rows"])
    assert rows[1]["speedup"] == pytest.approx(best["latency"]["median_ms"] / rows[1]["latency"]["median_ms"])
    # greedy AR: one incremental decoder pass per output token (words + </s>)
    greedy = j["rows"][1]
    loaded, ds = _load(trained, "--beam", "1")
    caps = inference.decode_dataset(loaded, ds, batch_size=1)
    assert greedy["decoder_passes"] == pytest.approx(sum(len(c.split()) + 1 for c in caps.values()) / len(caps))
    assert j["rows"][0]["decoder_passes"] >= greedy["decoder_passes"]  # beam 5 runs until its 5 beams end
    assert all(r["x_bare"] > 0 and r["overhead"] > 0 and r["unk_rate"] == 0 for r in j["rows"])
    md = (tmp_path / "b.md").read_text()
    assert "| beam5 |" in md and "| greedy |" in md and "CIDEr-D" in md and "banned_symbols" in md
    assert f"% of the best AR row, {best['name']}" in md and "| % of best AR |" in md and "speed-up vs greedy" in md and "throughput vs greedy" in md
    # the PNG's plotted points are the JSON's (stored in its metadata by evaluation/chart.py)
    from PIL import Image
    png = json.loads(Image.open(tmp_path / "b.png").text["Points"])
    assert png == j["chart"] and [p["name"] for p in png] == ["beam5", "greedy"]
    assert [p["cider"] for p in png] == [pytest.approx(100 * r["scores"]["CIDEr-D"], abs=1e-3) for r in j["rows"]]
    assert any(p["pareto"] for p in png)


def _row(name, cider, ms, thr):
    return {"name": name, "scores": {"CIDEr-D": cider}, "latency": {"median_ms": ms}, "throughput": thr}


def test_relate_best_ar_row_speed_baseline_and_compared_rows():
    # hand-worked: the best AR row is "AR best" (CIDEr-D 0.9 > 0.8), so percentages, speed-ups and throughput
    # ratios are of it; "AR shallow" is the compared row
    rows = [_row("AR beam 5", 0.8, 40.0, 100.0), _row("AR best", 0.9, 50.0, 80.0),
            _row("AR shallow", 0.7, 20.0, 160.0), _row("NAR", 0.72, 5.0, 240.0)]
    base, best = benchmark.relate(rows, ar_rows=["AR beam 5", "AR best", "AR shallow"], compare=["AR shallow"])
    assert (base, best) == ("AR best", "AR best")
    nar = rows[3]
    assert nar["quality_pct"] == pytest.approx(80.0) and nar["speedup"] == pytest.approx(10.0)
    assert nar["throughput_ratio"] == pytest.approx(3.0)
    assert nar["vs"]["AR shallow"] == {"speedup": pytest.approx(4.0), "throughput_ratio": pytest.approx(1.5)}
    assert rows[0]["quality_pct"] == pytest.approx(100 * 0.8 / 0.9) and rows[1]["speedup"] == 1.0
    # an explicit baseline keeps the speed reference; a tie between AR rows goes to the first named
    rows[0]["scores"]["CIDEr-D"] = 0.9
    base, best = benchmark.relate(rows, baseline="AR shallow", ar_rows=["AR best", "AR beam 5"])
    assert (base, best) == ("AR shallow", "AR best") and rows[3]["speedup"] == pytest.approx(4.0)
    # no AR rows: the first row is the speed baseline and no percentage is given
    rows = [_row("a", 0.5, 10.0, None), _row("b", 0.6, 2.0, None)]
    assert benchmark.relate(rows) == ("a", None) and rows[1]["speedup"] == 5.0
    assert rows[1]["throughput_ratio"] is None and "quality_pct" not in rows[1]


def test_benchmark_refuses_reference_rows_that_are_not_rows(tmp_path, capsys):
    for option in ("--ar-rows", "--compare", "--baseline"):
        with pytest.raises(SystemExit):
            benchmark.main([str(tmp_path), "--row", "a=--path x.pt", option, "AR shallow"])
        assert f"{option}: not a row name: 'AR shallow'" in capsys.readouterr().err


def test_select_decoding_on_the_validation_split(trained, tmp_path):
    from fairseq_nar_caption.cli import select_decoding
    from fairseq_nar_caption.evaluation.coco_metrics import coco_scores

    data, ckpt, _ = trained
    out = tmp_path / "val.json"
    best, every = select_decoding.main([str(data), "--common", f"--path {ckpt} --max-len-b 10",
                                        "--candidate", "cut=--beam 1 --max-len-a 0 --max-len-b 2",
                                        "--candidate", "greedy=--beam 1", "--candidate", "beam 3=--beam 3",
                                        "--candidate", "greedy again=--beam 1", "--out-json", str(out)])
    # every score is the scorer's CIDEr-D of that candidate's val captions (computed here independently)
    for c in every:
        loaded, _ = _load(trained, *c["args"])  # --max-len-b 10, or the candidate's own
        loaded.task.load_dataset("val")
        ds = loaded.task.dataset("val")
        caps = inference.decode_dataset(loaded, ds, batch_size=4)
        assert len(caps) == 15
        want = 100 * coco_scores({i: ds.refs[i] for i in caps}, caps, spice="off", metrics=["CIDEr-D"])["CIDEr-D"]
        assert c["score"] == pytest.approx(want, abs=1e-6), c["name"]
    scores = {c["name"]: c["score"] for c in every}
    assert scores["cut"] < scores["greedy"] == scores["greedy again"]  # two-word captions lose
    assert best["score"] == max(scores.values()) and best["name"] != "greedy again"  # the first on a tie
    assert json.load(open(out))["best"] == best
    with pytest.raises(SystemExit):  # never chosen on the test split
        select_decoding.main([str(data), "--subset", "test", "--candidate", "g=--beam 1"])


def test_benchmark_row_names_may_contain_equals():
    assert benchmark.parse_row("CT-MP T=2 B=6=--path x.pt --nar-iterations 2") == (
        "CT-MP T=2 B=6", ["--path", "x.pt", "--nar-iterations", "2"])
    with pytest.raises(Exception, match="NAME=ARGS"):
        benchmark.parse_row("no options here")


def test_distillation_writes_a_training_split(trained):
    data, ckpt, caps = trained
    out, captions = distill.distill(str(data), str(ckpt), batch_size=32)
    rows = read_manifest(out)
    assert [r.item_id for r in rows] == [str(i) for i in range(120)]  # one row per training item
    assert all(r.pos and len(r.pos.split()) == len(r.caption.split()) for r in rows)
    assert sum(r.caption in caps[r.item_id] for r in rows) >= 100
    loaded, _ = _load(trained)
    loaded.task.load_dataset("train_distill")  # a valid training split for the NAR methods
    assert len(loaded.task.dataset("train_distill")) == 120


def test_hub_captions_raw_feature_arrays_like_the_dataset(trained):
    from fairseq_nar_caption.hub import CaptionHub
    from fairseq_nar_caption.data.feature_store import open_feature_store

    data, ckpt, _ = trained
    hub = CaptionHub.from_pretrained(str(ckpt), str(data), ["--beam", "5", "--max-len-b", "10"])
    loaded, ds = _load(trained, "--beam", "5")
    expected = inference.decode_dataset(loaded, ds, batch_size=4)
    store = open_feature_store(str(data / "features.h5"))
    ids = list(expected)
    assert hub.caption([store.get(i) for i in ids]) == [expected[i] for i in ids]
    with pytest.raises(ValueError, match=r"features\[0\]: shape \(5, 3\)"):
        hub.caption([np.zeros((5, 3))])


def test_one_vocabulary_rule_bans_unk_from_ar_beam_search_unless_allowed(trained):
    # a model that prefers <unk>: boost its (tied) output row; beam search must still never emit it
    outs = {}
    for allow in (False, True):
        loaded, ds = _load(trained, "--beam", "5", *(["--allow-unk"] if allow else []))
        d = loaded.task.target_dictionary
        with torch.no_grad():
            loaded.models[0].decoder.output_projection.weight[d.unk()] *= 0
            loaded.models[0].decoder.output_projection.weight[d.unk()] += \
                loaded.models[0].decoder.output_projection.weight[d.index("a")] * 2
        outs[allow] = inference.decode_dataset(loaded, ds, batch_size=8)
    assert not any("<unk>" in c.split() for c in outs[False].values())
    assert any("<unk>" in c.split() for c in outs[True].values())  # the rule, not the model, kept it out


def test_repeat_rate_counts_immediately_repeated_words():
    from fairseq_nar_caption.evaluation.diversity import repeat_rate, unk_rate

    assert repeat_rate(["a red red ball", "a red ball", "a ball a ball", "on on on"]) == 0.5
    assert unk_rate(["a <unk> ball", "a ball"]) == 0.5 and repeat_rate([]) == 0.0
