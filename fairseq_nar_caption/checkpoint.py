"""Checkpoints: safe loading, atomic saving, resuming past a truncated file, dictionary check.

Safety.  torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq's
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
registers the list and installs the following around fairseq's ``checkpoint_utils``
(``install()``, idempotent):

- ``load_checkpoint_to_cpu``: a missing, empty, truncated or non-checkpoint file, or
  one holding objects outside the allow-list, stops with one ``CheckpointError``
  naming the file (never torch's advice to retry with ``weights_only=False``, which
  would run whatever code the file carries).
- ``PathManager.copy`` (how fairseq-train copies its checkpoint to
  ``checkpoint_last.pt``/``checkpoint_best.pt``: in place, so a kill mid-copy left a
  truncated file) copies local files through a temporary file and a rename.
- ``load_checkpoint`` (fairseq-train's resume): a corrupt ``checkpoint_last.pt`` is
  reported with its path and training resumes from the newest intact checkpoint in
  ``--save-dir`` (or stops, naming the file, when there is none).
- Dictionary fingerprint: every checkpoint fairseq-train saves for one of our tasks
  carries ``task_state["dictionary_fingerprint"]`` (a hash of the dictionary's
  symbols, in order); loading it for a task whose dictionary differs (other words, or
  the same words in another order, which would decode silently with the wrong words)
  is refused, naming the checkpoint and the dict.txt.
"""
import argparse
import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import zipfile

import torch

from .errors import CheckpointError
from .files import atomic_path

logger = logging.getLogger(__name__)

SAFE_GLOBALS = [argparse.Namespace]

torch.serialization.add_safe_globals(SAFE_GLOBALS)

FINGERPRINT_KEY = "dictionary_fingerprint"
SIZE_KEY = "dictionary_size"


# --------------------------------------------------------------------------- file checks
def checkpoint_problem(path: str):
    """What is wrong with ``path`` as a torch checkpoint (a zip archive whose central directory,
    written last, is present), or None when it looks whole."""
    if not os.path.exists(path):
        return "checkpoint not found"
    if os.path.isdir(path):
        return "is a folder, not a checkpoint file"
    size = os.path.getsize(path)
    if size == 0:
        return "empty checkpoint file (0 bytes; an interrupted save?)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return f"not a PyTorch checkpoint ({size} bytes that are not torch.save output)"
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"truncated or corrupt checkpoint ({size} bytes; {e}; an interrupted save?)"
    return None


def check_checkpoint_file(path: str) -> None:
    """One ``CheckpointError`` naming ``path`` unless it looks like a whole torch checkpoint."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")


def is_intact_checkpoint(path: str) -> bool:
    return checkpoint_problem(path) is None


_UNSUPPORTED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _refusal(path: str, err: Exception) -> CheckpointError:
    m = _UNSUPPORTED.search(str(err))
    what = f"the Python object {m.group(1)}" if m else "Python objects"
    return CheckpointError(f"{path}: refused: the checkpoint holds {what}, outside the weights-only allow-list; "
                           f"loading it could run code it carries (this package never turns that protection off)")


# --------------------------------------------------------------------------- dictionary fingerprint
def dictionary_fingerprint(dictionary) -> str:
    """A hash of the dictionary's symbols in index order (specials and appended symbols included)."""
    h = hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8"))
    return h.hexdigest()[:16]


def fingerprint_state(dictionary) -> dict:
    return {FINGERPRINT_KEY: dictionary_fingerprint(dictionary), SIZE_KEY: len(dictionary)}


def check_dictionary_fingerprint(task_state, dictionary, checkpoint_path: str, dict_path: str) -> None:
    """Refuse a checkpoint whose stored fingerprint differs from ``dictionary``'s
    (checkpoints without one, e.g. from before it existed, are accepted)."""
    stored = (task_state or {}).get(FINGERPRINT_KEY)
    if stored is None:
        return
    here = dictionary_fingerprint(dictionary)
    if stored != here:
        n = (task_state or {}).get(SIZE_KEY, "?")
        raise CheckpointError(
            f"{checkpoint_path}: trained with another dictionary than {dict_path} ({n} symbols, fingerprint "
            f"{stored}; this one: {len(dictionary)} symbols, {here}): use the data folder's dict.txt the model "
            f"was trained with")


def _is_ours(task) -> bool:
    return task is not None and type(task).__module__.startswith(__name__.rsplit(".", 1)[0])


def _dict_path(task) -> str:
    data = getattr(getattr(task, "cfg", None), "data", None)
    return os.path.join(str(data), "dict.txt") if data else "the task's dictionary"


# --------------------------------------------------------------------------- patches of fairseq
_local = threading.local()  # the task a checkpoint is being loaded for (resume / ensemble loading)


@contextlib.contextmanager
def _loading_for(task):
    prev = getattr(_local, "task", None)
    _local.task = task
    try:
        yield
    finally:
        _local.task = prev


def _wrap_load_to_cpu(orig):
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        local = path if os.path.exists(path) else None
        if local is not None:
            check_checkpoint_file(local)
        try:
            state = orig(path, *args, **kwargs)
        except CheckpointError:
            raise
        except Exception as e:
            import pickle

            if isinstance(e, pickle.UnpicklingError):
                raise _refusal(path, e) from None
            if isinstance(e, (EOFError, RuntimeError, zipfile.BadZipFile)) and local is not None:
                raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:200]})") from None
            raise
        task = getattr(_local, "task", None)
        if _is_ours(task) and isinstance(state, dict):
            check_dictionary_fingerprint(state.get("task_state"), task.target_dictionary, path, _dict_path(task))
        return state

    load_checkpoint_to_cpu.__wrapped__ = orig
    return load_checkpoint_to_cpu


def _wrap_ensemble_and_task(orig):
    def load_model_ensemble_and_task(filenames, arg_overrides=None, task=None, *args, **kwargs):
        with _loading_for(task):
            return orig(filenames, arg_overrides, task, *args, **kwargs)

    load_model_ensemble_and_task.__wrapped__ = orig
    return load_model_ensemble_and_task


def newest_intact_checkpoint(save_dir: str, exclude: str):
    """The most recently written intact ``checkpoint*.pt`` in ``save_dir`` other than ``exclude``."""
    if not os.path.isdir(save_dir):
        return None
    found = []
    for name in os.listdir(save_dir):
        p = os.path.join(save_dir, name)
        if (name.startswith("checkpoint") and name.endswith(".pt") and os.path.abspath(p) != os.path.abspath(exclude)
                and os.path.isfile(p)):
            found.append((os.path.getmtime(p), p))
    for _, p in sorted(found, reverse=True):
        if is_intact_checkpoint(p):
            return p
    return None


def _wrap_resume(orig):
    def load_checkpoint(cfg, trainer, **passthrough_args):
        task = getattr(trainer, "task", None)
        if _is_ours(task):  # every checkpoint this run saves carries the dictionary's fingerprint
            task.state.merge_state_dict(fingerprint_state(task.target_dictionary))
        suffix = getattr(trainer, "checkpoint_suffix", "") or ""
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        problem = checkpoint_problem(last) if os.path.exists(last) else None
        if cfg.restore_file == "checkpoint_last.pt" and problem is not None:
            fallback = newest_intact_checkpoint(cfg.save_dir, exclude=last)
            if fallback is None:
                raise CheckpointError(f"{last}: {problem}; no intact checkpoint in {cfg.save_dir} to resume from: "
                                      f"delete {last} to train from scratch")
            logger.warning(f"{last}: {problem}; resuming from {fallback}, the newest intact checkpoint")
            cfg.restore_file = fallback[: -len(f"{suffix}.pt")] + ".pt" if suffix else fallback
        with _loading_for(task):
            return orig(cfg, trainer, **passthrough_args)

    load_checkpoint.__wrapped__ = orig
    return load_checkpoint


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in ``dst``'s folder and a rename:
    readers (and a later resume) see the old file or the whole new one, never half."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _wrap_copy(orig):
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        from fairseq.file_io import PathManager

        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return orig(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        atomic_copy(src_path, dst_path)
        return True

    copy.__wrapped__ = orig
    return staticmethod(copy)


def install() -> None:
    """Install the wrappers around fairseq's checkpoint functions (once)."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if getattr(checkpoint_utils, "_nar_caption_installed", False):
        return
    checkpoint_utils.load_checkpoint_to_cpu = _wrap_load_to_cpu(checkpoint_utils.load_checkpoint_to_cpu)
    checkpoint_utils.load_model_ensemble_and_task = _wrap_ensemble_and_task(
        checkpoint_utils.load_model_ensemble_and_task)
    checkpoint_utils.load_checkpoint = _wrap_resume(checkpoint_utils.load_checkpoint)
    PathManager.copy = _wrap_copy(PathManager.copy)
    checkpoint_utils._nar_caption_installed = True


install()
