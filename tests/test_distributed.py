"""Data-parallel training on two CPU processes (gloo), as ../shared/ENVIRONMENT.md describes:
one fairseq-train per rank, and both ranks end with identical weights."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, USER_DIR
from test_bad_input import MODEL, ONE_THREAD, make_data

# Each rank runs fairseq-train's own cli_main; the wrapper only also writes that rank's weights
# whenever fairseq saves (fairseq itself writes checkpoints from rank 0 alone).
RANK_MAIN = """
import sys, torch
sys.argv[0] = "fairseq-train"
from fairseq import checkpoint_utils
from fairseq_cli import train
orig = checkpoint_utils.save_checkpoint
def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
    torch.save(trainer.get_model().state_dict(), f"{cfg.save_dir}/rank{trainer.data_parallel_rank}_weights.pt")
    return orig(cfg, trainer, epoch_itr, val_loss)
checkpoint_utils.save_checkpoint = save_checkpoint
sys.argv[1:] = sys.argv[2:]
train.cli_main()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_ranks_train_to_identical_weights(tmp_path):
    data = make_data(str(tmp_path / "data"), n=40)
    save = tmp_path / "ckpt"
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-c", RANK_MAIN, "--", data, "--user-dir", USER_DIR, "--task", "captioning", *MODEL,
               "--max-update", "4", "--save-dir", str(save), "--num-workers", "0",
               "--distributed-backend", "gloo", "--distributed-no-spawn", "--ddp-backend", "legacy_ddp",
               "--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
               "--distributed-rank", str(rank)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"two-rank training timed out (port {port})", pytrace=False)
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank}:\n{out[-3000:]}"
    assert "training on 2 devices" in outs[0]
    w0 = torch.load(save / "rank0_weights.pt")
    w1 = torch.load(save / "rank1_weights.pt")
    assert w0.keys() == w1.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    assert state["optimizer_history"][-1]["num_updates"] == 4
    for k in w0:  # rank 0's checkpoint holds the same weights
        assert torch.equal(state["model"][k], w0[k]), k
