"""What every console entry shares: the parser, option checks, the error exit, interrupts, common flags.

Known errors (``errors.KnownError``: bad data, options, checkpoints, outputs, an unavailable
metric) already name the file, the item and the fix: a command prints them as one line,
``<command>: error: <message>``, and exits 1.  Any other exception is a bug and keeps its
traceback.  ``NAR_CAPTION_TRACEBACK=1`` brings the traceback back for known errors too.

- ``parser(doc, prog)``: an ``argparse`` parser whose usage errors are one line (exit 2), no usage
  block; the option types below check ranges and formats while parsing, before any work.
- ``run_main(main, argv, prog)``: call a command's ``main``; known errors -> one line, exit 1;
  Ctrl-C -> one line, exit 130; SIGTERM -> one line, exit 143 (raised as ``errors.Terminated``
  so the same clean-up runs: the atomic writers of ``files.py`` leave nothing under a final name).
  Returns None, so a console wrapper's ``sys.exit(cli_main())`` exits 0 on success.
- ``excepthook``: the same for fairseq's own entry points (fairseq-train, fairseq-generate),
  which we do not wrap: installed by the package ``__init__`` only when the running program
  is one of them or one of ours (``install_excepthook``), never in a user's own Python program.
  An interrupted or failed ``fairseq-generate --results-path`` leaves no partial
  ``generate-<subset>.txt`` behind.
- ``quiet_framework_chatter``: in those same processes, the fixed set of deprecation notes
  fairseq-fixed's own calls raise on every run (``FRAMEWORK_CHATTER``, matched by message).
- ``add_feature_args`` / ``add_device_arg`` / ``add_overwrite_arg``: ``--feature-files``,
  ``--feature-key-template``, ``--feature-max-abs``; ``--device cpu|cuda`` (cuda refused where
  torch sees no CUDA device); ``--overwrite``.

This module imports nothing heavy (the package ``__init__`` imports it first).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from typing import Callable, List, NoReturn, Optional, Sequence

from ..errors import KnownError, Terminated

TRACEBACK_ENV = "NAR_CAPTION_TRACEBACK"
ENTRY_PREFIXES = ("fairseq-", "nar-caption-")
INTERRUPTED = {130: "interrupted (Ctrl-C)", 143: "terminated (SIGTERM)"}


def one_line(exc: BaseException) -> str:
    """The error's message on one line.  An error re-raised from a DataLoader worker carries
    the worker's traceback in its message: its last line is the original message."""
    msg = str(exc).strip()
    if "Original Traceback" in msg:
        last = [ln for ln in msg.splitlines() if ln.strip()][-1]
        msg = re.sub(r"^[\w.]*\b" + re.escape(type(exc).__name__) + r": ", "", last.strip())
    return " ".join(msg.split("\n"))


def prog_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "nar-caption"


def want_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def error_exit(exc: BaseException, prog: Optional[str] = None) -> NoReturn:
    raise SystemExit(f"{prog or prog_name()}: error: {one_line(exc)}")


def interrupt_status(exc: KeyboardInterrupt) -> int:
    return exc.exit_status if isinstance(exc, Terminated) else 130


# --------------------------------------------------------------------------- SIGTERM
_MAIN_PID = None


def _on_sigterm(signum, frame):
    if os.getpid() != _MAIN_PID:  # a forked worker: die as SIGTERM asks
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def catch_sigterm() -> None:
    """SIGTERM raises ``Terminated`` in this (main) process, so clean-up runs as for Ctrl-C."""
    global _MAIN_PID
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)


def run_main(main: Callable, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    """``main(argv)``; a known error becomes one line on stderr and exit status 1; an interrupt one
    line and 130 (Ctrl-C) / 143 (SIGTERM)."""
    catch_sigterm()
    try:
        main(argv)
    except KeyboardInterrupt as e:
        status = interrupt_status(e)
        fresh_line = "\n" if sys.stderr.isatty() else ""  # a progress bar may hold the terminal's line
        sys.stderr.write(f"{fresh_line}{prog or prog_name()}: {INTERRUPTED[status]}; nothing was left half-written\n")
        raise SystemExit(status) from None
    except Exception as e:
        if isinstance(e, KnownError) and not want_traceback():
            error_exit(e, prog)
        raise
    return None


# --------------------------------------------------------------------------- fairseq's entry points
_GENERATE_RESULTS: Optional[str] = None  # fairseq-generate --results-path's file, while this process may write it
_STARTED = time.time()


def _generate_results_file(argv: List[str]) -> Optional[str]:
    """The file ``fairseq-generate --results-path DIR`` writes: DIR/generate-<gen-subset>.txt."""
    def value(flag, default=None):
        for k, a in enumerate(argv):
            if a == flag and k + 1 < len(argv):
                return argv[k + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return default

    folder = value("--results-path")
    return os.path.join(folder, f"generate-{value('--gen-subset', 'test')}.txt") if folder else None


def _drop_partial_results() -> str:
    """Remove the results file this fairseq-generate run opened (it is partial); say so."""
    path = _GENERATE_RESULTS
    try:
        if path and os.path.isfile(path) and os.path.getmtime(path) >= _STARTED - 1:
            os.unlink(path)
            return f" (removed the partial {path})"
    except OSError:
        pass
    return ""


def _stop_workers() -> None:
    """End this process's worker processes (a DataLoader's) before it exits at once, so that none of
    them prints a traceback about its vanished parent."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return
    children = mp.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=2)


def excepthook(exc_type, exc, tb) -> None:
    if exc is not None and isinstance(exc, KeyboardInterrupt):
        status = interrupt_status(exc)
        _stop_workers()
        fresh_line = "\n" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{fresh_line}{prog_name()}: {INTERRUPTED[status]}{_drop_partial_results()}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(status)
    if exc is not None and isinstance(exc, KnownError) and not want_traceback():
        sys.stderr.write(f"{prog_name()}: error: {one_line(exc)}{_drop_partial_results()}\n")
        return
    _drop_partial_results()
    sys.__excepthook__(exc_type, exc, tb)


# Chatter fairseq-fixed's own calls raise on every run with the pinned hydra/torch, none of it about
# the user's data or options: hydra's deprecations of the compose API fairseq uses, the DataLoader's
# pin_memory note on a CPU-only machine, fairseq's deprecated autocast spelling.
FRAMEWORK_CHATTER = [
    (UserWarning, r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental"),
    (UserWarning, r"\s*The version_base parameter is not specified"),
    (UserWarning, r"In 'config': Usage of deprecated keyword in package header"),
    (UserWarning, r"\s*'config' is validated against ConfigStore schema"),
    (UserWarning, r"\s*The strict flag in the compose API is deprecated"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
    (FutureWarning, r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"),
]


def quiet_framework_chatter() -> None:
    import warnings

    for category, message in FRAMEWORK_CHATTER:
        warnings.filterwarnings("ignore", message=message, category=category)


def install_excepthook() -> bool:
    """Install ``excepthook`` (and SIGTERM as an exception) when this process is a fairseq or
    nar-caption command (``sys.argv[0]`` names one, or ``python -m fairseq_cli.*`` /
    ``fairseq_nar_caption.cli.*``)."""
    global _GENERATE_RESULTS
    argv0 = sys.argv[0] if sys.argv else ""
    name = os.path.basename(argv0)
    ours = name.startswith(ENTRY_PREFIXES) or f"{os.sep}fairseq_cli{os.sep}" in argv0 \
        or f"fairseq_nar_caption{os.sep}cli{os.sep}" in argv0
    if ours:
        quiet_framework_chatter()
    if ours and sys.excepthook is sys.__excepthook__:
        sys.excepthook = excepthook
        catch_sigterm()
        if name == "fairseq-generate" or argv0.endswith(f"fairseq_cli{os.sep}generate.py"):
            _GENERATE_RESULTS = _generate_results_file(sys.argv[1:])
        return True
    return False


# --------------------------------------------------------------------------- parsing
class Parser(argparse.ArgumentParser):
    """Usage errors are one line, ``<prog>: error: <message>``, exit 2 (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(doc: Optional[str], prog: Optional[str] = None) -> Parser:
    return Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def _number(kind, low=None, high=None, low_open=False):
    def check(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and v != v:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if low is not None and (v <= low if low_open else v < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return v

    return check


def int_at_least(low: int):
    """An integer option >= ``low``."""
    return _number(int, low)


positive_int = _number(int, 1)
nonneg_int = _number(int, 0)
positive_float = _number(float, 0, low_open=True)
nonneg_float = _number(float, 0)
probability = _number(float, 0, 1)
fraction = _number(float, 0, 0.99)  # a rate that must leave something


def int_list(low: int = 1):
    """A comma-separated list of integers >= ``low`` (an empty text: the empty list)."""
    each = _number(int, low)

    def check(text: str):
        parts = [p.strip() for p in text.split(",")]
        if text.strip() == "":
            return []
        if any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return [each(p) for p in parts]

    return check


def name_list(text: str) -> List[str]:
    """A comma-separated list of names (split names, files), none empty."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return parts


def split_name(text: str) -> str:
    """A split name: ``<data>/<split>.tsv`` names its manifest (an absolute path works too, as for the task)."""
    if not text or text != text.strip() or any(c in text for c in "\t\n") or text.endswith(("/", ".tsv")):
        raise argparse.ArgumentTypeError(f"a split is the name of <data>/<split>.tsv without .tsv, such as "
                                         f"train_distill, got {text!r}")
    return text


def device(text: str) -> str:
    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda, got {text!r}")
    if text == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"no CUDA device is available here (torch {torch.__version__}); "
                                             f"use --device cpu")
    return text


# --------------------------------------------------------------------------- shared flags
def add_feature_args(p, files_default: str = "features.h5") -> None:
    from ..data.feature_store import DEFAULT_MAX_ABS

    p.add_argument("--feature-files", default=files_default,
                   help="comma-separated HDF5 files / .npy folders (relative to the data folder or absolute)")
    p.add_argument("--feature-key-template", default="{}",
                   help="item id -> key: '{}', '{}_features', '%%d_grids', 'video%%s'")
    p.add_argument("--feature-max-abs", type=positive_float, default=DEFAULT_MAX_ABS,
                   help="refuse finite feature values beyond this magnitude as corrupt (default %(default)g)")


def add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu", type=device, help="cpu or cuda (default cpu)")


def add_overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output this command did not make (never one of its inputs)")
