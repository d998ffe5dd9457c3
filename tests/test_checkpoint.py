"""Checkpoints load under torch's weights_only protection, which stays on."""
import argparse
import os

import pytest
import torch

import fairseq_nar_caption  # noqa: F401  (registers the allow-list, as --user-dir does)


class NotAllowed:
    pass


def test_no_env_switch_is_set():
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_legacy_fairseq_args_namespace_loads(tmp_path):
    # what legacy-argparse fairseq checkpoints (OFA, NARVL) carry under "args"
    path = tmp_path / "legacy.pt"
    torch.save({"args": argparse.Namespace(arch="ofa_base", lr=[1e-5]), "model": {"w": torch.ones(2)}}, path)
    state = torch.load(path)  # default weights_only=True
    assert state["args"].arch == "ofa_base" and state["args"].lr == [1e-5]


def test_other_globals_are_still_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": NotAllowed()}, path)
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(path)
