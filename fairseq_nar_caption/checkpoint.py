"""Safe checkpoint loading.

torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq's
``checkpoint_utils`` calls ``torch.load`` without the argument.  We keep that
protection on and never set ``weights_only=False`` or an environment variable.

- Checkpoints written by fairseq-train with this package's models (dataclass
  configs, saved by fairseq as plain containers) hold only globals torch already
  allows: tensors, ``collections.OrderedDict`` (checked by tests/test_checkpoint.py).
- Checkpoints of legacy-argparse fairseq models (OFA, NARVL, older fairseq) keep
  their configuration as ``argparse.Namespace`` under ``args``/``cfg.model``; that
  class is allow-listed here, because its attributes are rebuilt from plain
  values, which the weights-only unpickler checks in turn.  Nothing else is.

Importing the package (which ``--user-dir`` does before any checkpoint is read)
registers the list.
"""
import argparse

import torch

SAFE_GLOBALS = [argparse.Namespace]

torch.serialization.add_safe_globals(SAFE_GLOBALS)
