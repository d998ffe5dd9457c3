"""The arena: every paradigm trains (through the real recipe, examples/arena/arena.sh, i.e.
fairseq-train) and decodes through fairseq-generate on ONE toy feature folder, with one AR
teacher and one distilled split; the benchmark charts them; model/generator mismatches and
options of another generator are refused by name; NARVL over features decodes batch 1 as
batched."""
import json
import math
import os
import re

import pytest
import torch

from conftest import BIN, REPO, USER_DIR, decode_batched_and_single, run_cli
from fairseq_nar_caption.cli import benchmark
from fairseq_nar_caption.data.toy import ToyConfig, generate

ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

# paradigm → (checkpoint folder, fairseq-generate arguments)
ROWS = {
    "AR beam 5": ("ar", ["--beam", "5", "--max-len-b", "30"]),
    "NACF CT-MP": ("nacf", ["--generator", "ct-mp", "--nar-iterations", "2", "--length-beam", "2"]),
    "SAIC outline-fill": ("saic", ["--generator", "outline-fill", "--outline-beam", "2", "--fill-beam", "1",
                                   "--max-len-b", "30"]),
    "NARVL CTC": ("narvl", ["--generator", "ctc"]),
    "RDT diffusion": ("rdt", ["--generator", "diffusion", "--diffusion-steps", "5"]),
    "DAG lookahead": ("dag", ["--generator", "dag", "--dag-decode", "lookahead"]),
}


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    root = tmp_path_factory.mktemp("arena")
    generate(str(root / "toy"), ToyConfig(seed=5, n_images=(200, 20, 24), n_videos=(4, 2, 2)), log=lambda s: None)
    data, run = root / "toy" / "images", root / "run"
    env = dict(ONE_THREAD, DATA=str(data), RUN=str(run), AR_EPOCHS="2", NAR_UPDATES="20", BENCH="0", SCST="1",
               SCST_UPDATES="3", AR_SCST_EPOCHS="2",
               SIZE="--embed-dim 64 --ffn-embed-dim 128 --attention-heads 4 --encoder-layers 1 --decoder-layers 2",
               PATH=BIN + os.pathsep + os.environ["PATH"])
    p = run_cli(["bash", os.path.join(REPO, "examples", "arena", "arena.sh")], env=env, timeout=900)
    return data, run, p.stdout


def generate_args(run, name):
    folder, args = ROWS[name]
    extra = ["--retrieval-file", str(run / "retrieval.json")] if folder == "rdt" else []
    return ["--path", str(run / folder / "checkpoint_best.pt"), *args, *extra]


def test_arena_recipe_trains_every_paradigm_on_one_teacher_and_one_distillation(arena):
    data, run, out = arena
    for folder in ("ar", "ar_shallow", "nacf", "saic", "narvl", "rdt", "dag", "dag_raw"):
        assert (run / folder / "checkpoint_best.pt").is_file(), folder
    # the AR models: selected by validation CIDEr-D with patience; the shallow one has a single decoder layer
    # and the encoder deeper by the removed layer's parameters (d 64, ffn 128: 1.5 encoder layers per decoder
    # layer, so 1 + 2 encoder layers)
    for folder in ("ar", "ar_shallow"):
        assert torch.load(run / folder / "checkpoint_best.pt", weights_only=True)["cfg"]["checkpoint"]["patience"] == 3
    shallow = torch.load(run / "ar_shallow" / "checkpoint_best.pt", weights_only=True)["cfg"]["model"]
    assert (shallow["encoder_layers"], shallow["decoder_layers"]) == (3, 1)
    kd = data / f"train_distill_{run.name}.tsv"
    assert kd.is_file() and len(kd.read_text().splitlines()) == 201  # header + one teacher caption per image
    for folder in ("nacf", "saic", "narvl", "rdt", "dag"):  # every NAR row trained on that one distilled split
        log = (run / "logs" / f"{folder}.log").read_text()
        assert f"train_distill_{run.name}.tsv: 200 examples" in log, folder
    for folder in ("nacf", "saic", "narvl", "dag"):  # initialised from the one AR model
        assert f"from {run}/ar/checkpoint_best.pt" in (run / "logs" / f"{folder}.log").read_text()
    # SCST=1: the second stage for the AR model and every NAR model, from its best checkpoint, the policy gradient
    # moving its weights (RDT: the guided variant with the teacher's captions)
    for folder, criterion in [("ar", "scst"), ("nacf", "scst"), ("saic", "scst"), ("narvl", "scst"), ("dag", "scst"),
                              ("rdt", "rdt_scst")]:
        state = torch.load(run / f"{folder}_scst" / "checkpoint_last.pt", weights_only=True)
        assert state["cfg"]["criterion"]["_name"] == criterion, folder
        log = (run / "logs" / f"{folder}_scst.log").read_text()
        assert "reward" in log and "| cider " in log, folder
        before = torch.load(run / folder / "checkpoint_best.pt", weights_only=True)["model"]
        assert any(not torch.equal(before[k], state["model"][k]) for k in before), folder
        # the NAR rows: SCST_UPDATES updates; the AR row: to its validation plateau, at most AR_SCST_EPOCHS
        limits = (state["cfg"]["optimization"]["max_update"], state["cfg"]["optimization"]["max_epoch"],
                  state["cfg"]["checkpoint"]["patience"])
        assert limits == ((0, 2, 3) if folder == "ar" else (3, 0, -1)), (folder, limits)
    # the console shows steps and validations, not fairseq's configuration dump
    assert "train nacf" in out and "valid loss" in out and "'_name'" not in out and "INFO" not in out


def recipe_flags(**settings):
    """each NAR row's first-stage flags from examples/arena/recipe.sh under the given settings, as fairseq reads
    them (the last occurrence of an option wins)."""
    script = ("source examples/lib.sh; SIZE=; FEATS=; AR=ar.pt; RET=r.json; NAR_UPDATES=20; RDT_UPDATES=30; "
              "source examples/arena/recipe.sh; "
              "for f in NACF SAIC NARVL RDT DAG; do v=${f}_FLAGS; echo $f ${!v}; done")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAR_")}
    p = run_cli(["bash", "-c", script], env=dict(env, **settings), cwd=REPO)
    rows = {}
    for line in p.stdout.splitlines():
        name, *words = line.split()
        opts = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--max-update", "--max-epoch", "--patience")}
        rows[name] = (opts.get("--max-update"), opts.get("--max-epoch"), opts.get("--patience"))
    return rows


def test_the_nar_rows_train_for_a_budget_or_to_their_validation_plateau():
    # default: NAR_UPDATES updates (RDT: RDT_UPDATES), no patience
    fixed = recipe_flags()
    assert fixed == {**{n: ("20", None, None) for n in ("NACF", "SAIC", "NARVL", "DAG")}, "RDT": ("30", None, None)}
    # NAR_EPOCHS: every row, RDT too, to its plateau like the AR row (NAR_PATIENCE, default 3), no update cap
    assert set(recipe_flags(NAR_EPOCHS="7").values()) == {(None, "7", "3")}
    assert set(recipe_flags(NAR_EPOCHS="7", NAR_PATIENCE="2").values()) == {(None, "7", "2")}


@pytest.mark.parametrize("script", ["examples/arena/ablations.sh", "examples/arena/orderings.sh",
                                    "examples/rdt/condition.sh"])
def test_the_fixed_budget_scripts_ignore_an_exported_nar_epochs(script):
    # each script's own lines from its update budget to its `source examples/arena/recipe.sh` (its checks for
    # the arena's files left out), run with NAR_EPOCHS exported: the recipe still gets the fixed budget
    lines = open(os.path.join(REPO, script)).read().splitlines()
    first = next(i for i, l in enumerate(lines) if "NAR_UPDATES=" in l)
    last = next(i for i, l in enumerate(lines) if l.startswith("source examples/arena/recipe.sh"))
    body = "\n".join(l for l in lines[first:last + 1] if "exit" not in l and not l.startswith(("for ", "done")))
    script_text = f"source examples/lib.sh; UPD=40; SIZE=; RUN=runs/x; ARENA=runs/x\n{body}\necho $NACF_FLAGS $RDT_FLAGS"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAR_")}
    words = run_cli(["bash", "-c", script_text], env=dict(env, NAR_EPOCHS="7"), cwd=REPO).stdout.split()
    assert words.count("--max-update") == 2 and "--max-epoch" not in words and "--patience" not in words


@pytest.mark.parametrize("name", list(ROWS))
def test_every_paradigm_decodes_through_fairseq_generate_on_the_same_folder(arena, name):
    data, run, _ = arena
    p = run_cli([os.path.join(BIN, "fairseq-generate"), str(data), "--user-dir", USER_DIR, "--task", "captioning",
                 *generate_args(run, name), "--gen-subset", "test", "--batch-size", "8", "--cpu"], env=ONE_THREAD)
    hyps = dict(re.findall(r"^H-(\d+)\t\S+\t(.*)$", p.stdout, re.M))
    assert sorted(map(int, hyps)) == list(range(24))  # every test item, none dropped
    words = {w for h in hyps.values() for w in h.split()}
    assert words and not words & {"<unk>", "<mask>", "<vis>", "<blank>", "<pad>", "<s>"}  # one vocabulary rule


def test_narvl_over_features_decodes_batch_one_as_batched(arena):
    data, run, _ = arena
    loaded, batched, single = decode_batched_and_single(str(data), generate_args(run, "NARVL CTC") + ["--cpu"],
                                                        max_items=10, batch_size=8)
    assert type(loaded.models[0]).__name__ == "NARVLFeatureModel"
    assert all(single[k] == batched[k] for k in single) and len(single) == 10


def test_a_generator_and_model_mismatch_is_refused_by_name(arena):
    data, run, _ = arena
    cases = [
        (["--path", str(run / "nacf" / "checkpoint_best.pt")], r"--generator sequence cannot decode NACFModel"),
        (["--path", str(run / "ar" / "checkpoint_best.pt"), "--generator", "ctc"],
         r"--generator ctc cannot decode ARCaptionModel .*it decodes with --generator sequence"),
        (["--path", str(run / "narvl" / "checkpoint_best.pt"), "--generator", "diffusion"],
         r"--generator diffusion cannot decode NARVLFeatureModel .*--generator ctc"),
        (["--path", str(run / "narvl" / "checkpoint_best.pt"), "--generator", "ctc", "--nar-iterations", "3"],
         r"--nar-iterations is an option of --generator mp/ef/l2r/ct-mp/ct-ef/ct-l2r, not of --generator ctc"),
        (["--path", str(run / "ar" / "checkpoint_best.pt"), "--diffusion-steps", "3"],
         r"--diffusion-steps is an option of --generator diffusion, not of --generator sequence"),
        (["--path", str(run / "nacf" / "checkpoint_best.pt"), "--generator", "mp", "--length-norm-alpha", "-100"],
         r"--length-norm-alpha must be in \[0, 2\], got -100"),
    ]
    for args, message in cases:
        p = run_cli([os.path.join(BIN, "fairseq-generate"), str(data), "--user-dir", USER_DIR, "--task", "captioning",
                     *args, "--gen-subset", "test", "--cpu"], env=ONE_THREAD, check=False)
        assert p.returncode != 0 and re.search(message, p.stderr), (args, p.stderr[-800:])
        assert "H-0" not in p.stdout  # refused before anything is decoded


def test_one_benchmark_run_charts_every_paradigm(arena, tmp_path):
    data, run, _ = arena
    rows = []
    for name in ROWS:
        rows += ["--row", f"{name}=" + " ".join(generate_args(run, name))]
    torch_threads = torch.get_num_threads()
    try:
        result, sweep = benchmark.main([str(data), "--threads", "1", "--max-items", "8", "--warmup", "2",
                                        "--throughput-batch", "4", "--metrics", "Bleu,CIDEr-D",
                                        "--length-sweep", "8,12", "--sweep-items", "2", *rows,
                                        "--out-json", str(tmp_path / "b.json"), "--out-png", str(tmp_path / "b.png"),
                                        "--out-md", str(tmp_path / "b.md")])
    finally:
        torch.set_num_threads(torch_threads)
    j = json.load(open(tmp_path / "b.json"))
    by = {r["name"]: r for r in j["rows"]}
    assert list(by) == list(ROWS) and all(r["n_items"] == 8 for r in j["rows"])
    assert by["NARVL CTC"]["decoder_passes"] == 1  # one pass over the queries
    assert by["RDT diffusion"]["decoder_passes"] == 5  # T denoising passes
    assert by["NACF CT-MP"]["decoder_passes"] == 3  # the template pass + T = 2 (the length beam is one batch)
    assert by["AR beam 5"]["decoder_passes"] > by["NARVL CTC"]["decoder_passes"]
    from PIL import Image
    assert json.loads(Image.open(tmp_path / "b.png").text["Points"]) == j["chart"]
    assert [p["name"] for p in j["chart"]] == list(ROWS)
    assert {"NARVL CTC", "RDT diffusion"} <= {k for k, v in sweep["rows"].items() if v.get("fixed_positions")}
    assert set(sweep["rows"]["AR beam 5"]["ms"]) == {"8", "12"}
    md = (tmp_path / "b.md").read_text()
    assert all(f"| {name} |" in md for name in ROWS) and "decoder passes" in md


# half precision without a GPU: every generator and every criterion under CPU bfloat16 autocast (large
# negative mask constants, log-space programmes and softmaxes that underflow show here as NaN / inf)
@pytest.mark.parametrize("name", list(ROWS))
def test_every_generator_decodes_under_cpu_bfloat16_autocast(arena, name):
    from fairseq_nar_caption import inference

    data, run, _ = arena
    loaded = inference.load(str(data), generate_args(run, name) + ["--cpu"])
    loaded.task.load_dataset("test")
    sample = next(inference.batches(loaded.task.dataset("test"), 8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hypos = loaded.task.inference_step(loaded.generator, loaded.models, sample)
    assert len(hypos) == 8
    banned = {loaded.task.target_dictionary.index(s) for s in ("<unk>", "<pad>", "<s>")}
    for h in hypos:
        best = h[0]
        assert math.isfinite(float(best["score"])) and torch.isfinite(best["positional_scores"].float()).all()
        assert best["tokens"].numel() >= 1 and not set(best["tokens"].tolist()) & banned


@pytest.mark.parametrize("folder", ["ar", "nacf", "saic", "narvl", "rdt", "dag"])
def test_every_criterion_trains_under_cpu_bfloat16_autocast(arena, folder):
    from fairseq import checkpoint_utils, tasks

    data, run, _ = arena
    state = checkpoint_utils.load_checkpoint_to_cpu(str(run / folder / "checkpoint_best.pt"))
    cfg = state["cfg"]
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"])
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    ds = task.dataset("train")
    sample = ds.collater([ds[i] for i in range(16)])
    model.train()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, sample_size, log = criterion(model, sample)
    assert torch.isfinite(loss.detach().float()) and float(loss.detach()) > 0, (folder, log)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), folder


# no per-step host synchronisation in the iterative decoders: the reads of tensor values on the host (.item(),
# .tolist(), bool / int / float of a tensor, .cpu()) made inside a generator's pass loop do not grow with the
# number of passes (what the hypotheses cost afterwards depends on the caption lengths, not on the loop)
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu")
LOOPS = {"sample", "_mask_predict", "_fix_q_per_pass"}  # DiffusionGenerator.sample, MaskPredictGenerator's loops


@pytest.mark.parametrize("folder,few,many", [
    ("nacf", ["--generator", "mp", "--nar-iterations", "1"], ["--generator", "mp", "--nar-iterations", "6"]),
    ("nacf", ["--generator", "ct-mp", "--nar-iterations", "1"], ["--generator", "ct-mp", "--nar-iterations", "6"]),
    ("nacf", ["--generator", "ef", "--nar-q", "6"], ["--generator", "ef", "--nar-q", "1"]),
    ("nacf", ["--generator", "l2r", "--nar-q", "6"], ["--generator", "l2r", "--nar-q", "1"]),
    ("rdt", ["--generator", "diffusion", "--diffusion-steps", "2"], ["--generator", "diffusion", "--diffusion-steps", "9"]),
    ("rdt", ["--generator", "diffusion", "--diffusion-steps", "2", "--diffusion-noise"],
     ["--generator", "diffusion", "--diffusion-steps", "9", "--diffusion-noise"]),
])
def test_host_reads_do_not_grow_with_the_decoding_passes(arena, monkeypatch, folder, few, many):
    import sys

    from fairseq_nar_caption import inference
    from fairseq_nar_caption.evaluation.latency import PassCounter

    def in_loop():
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_name in LOOPS and "generators" in f.f_code.co_filename:
                return True
            f = f.f_back
        return False

    data, run, _ = arena
    extra = ["--retrieval-file", str(run / "retrieval.json")] if folder == "rdt" else []
    reads, passes = [], []
    for args in (few, many):
        loaded = inference.load(str(data), ["--path", str(run / folder / "checkpoint_best.pt"), *args, *extra, "--cpu"])
        loaded.task.load_dataset("test")
        sample = next(inference.batches(loaded.task.dataset("test"), 8))
        count, counter = [0], PassCounter(loaded)
        with monkeypatch.context() as m:
            for name in HOST_READS:
                def wrapped(self, *a, _orig=getattr(torch.Tensor, name), **k):
                    count[0] += in_loop()
                    return _orig(self, *a, **k)
                m.setattr(torch.Tensor, name, wrapped)
            before = counter.count
            inference.decode_batch(loaded, sample)
            passes.append(counter.count - before)
        counter.close()
        reads.append(count[0])
    assert passes[1] > passes[0], passes  # the second configuration runs more decoder passes ...
    assert reads[1] == reads[0] <= 1, (reads, passes)  # ... and the loops read at most once (EF / L2R's pass count)
