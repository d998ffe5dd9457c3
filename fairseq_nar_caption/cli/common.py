"""What every console entry shares: the error exit and the feature / device flags.

Known errors (``DataError`` and its subclasses such as ``checkpoint.CheckpointError``,
``MetricUnavailable``) already name the file, the item and the fix: a command prints
them as one line, ``<command>: error: <message>``, and exits 1.  Any other exception
is a bug and keeps its traceback.  ``NAR_CAPTION_TRACEBACK=1`` brings the traceback
back for known errors too.

- ``run_main(main, argv, prog)``: call a command's ``main``; known errors -> one line, exit 1;
  returns None, so a console wrapper's ``sys.exit(cli_main())`` exits 0 on success.
- ``excepthook``: the same for fairseq's own entry points (fairseq-train, fairseq-generate),
  which we do not wrap: installed by the package ``__init__`` only when the running program
  is one of them or one of ours (``install_excepthook``), never in a user's own Python program.
- ``quiet_framework_chatter``: in those same processes, the fixed set of deprecation notes
  fairseq-fixed's own calls raise on every run (``FRAMEWORK_CHATTER``, matched by message).
- ``add_feature_args(parser)`` / ``add_device_arg(parser)``: ``--feature-files``,
  ``--feature-key-template``, ``--feature-max-abs``; ``--device cpu|cuda``.

This module imports nothing heavy (the package ``__init__`` imports it first).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, NoReturn, Optional, Sequence

TRACEBACK_ENV = "NAR_CAPTION_TRACEBACK"
ENTRY_PREFIXES = ("fairseq-", "nar-caption-")


def known_errors() -> tuple:
    """DataError (and its subclasses), and the scorer's MetricUnavailable once the scorer is loaded."""
    from ..data.manifest import DataError

    known = [DataError]
    coco = sys.modules.get(__name__.rsplit(".", 2)[0] + ".evaluation.coco_metrics")
    if coco is not None:
        known.append(coco.MetricUnavailable)
    return tuple(known)


def _is_known(exc: BaseException) -> bool:
    return isinstance(exc, known_errors())


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


def run_main(main: Callable, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> None:
    """``main(argv)``; a known error becomes one line on stderr and exit status 1."""
    try:
        main(argv)
    except Exception as e:
        if _is_known(e) and not want_traceback():
            error_exit(e, prog)
        raise
    return None


def excepthook(exc_type, exc, tb) -> None:
    if exc is not None and _is_known(exc) and not want_traceback():
        sys.stderr.write(f"{prog_name()}: error: {one_line(exc)}\n")
        return
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
    """Install ``excepthook`` when this process is a fairseq or nar-caption command
    (``sys.argv[0]`` names one, or ``python -m fairseq_cli.*`` / ``fairseq_nar_caption.cli.*``)."""
    argv0 = sys.argv[0] if sys.argv else ""
    name = os.path.basename(argv0)
    ours = name.startswith(ENTRY_PREFIXES) or f"{os.sep}fairseq_cli{os.sep}" in argv0 \
        or f"fairseq_nar_caption{os.sep}cli{os.sep}" in argv0
    if ours:
        quiet_framework_chatter()
    if ours and sys.excepthook is sys.__excepthook__:
        sys.excepthook = excepthook
        return True
    return False


# --------------------------------------------------------------------------- shared flags
def add_feature_args(p, files_default: str = "features.h5") -> None:
    from ..data.feature_store import DEFAULT_MAX_ABS

    p.add_argument("--feature-files", default=files_default,
                   help="comma-separated HDF5 files / .npy folders (relative to the data folder or absolute)")
    p.add_argument("--feature-key-template", default="{}",
                   help="item id -> key: '{}', '{}_features', '%%d_grids', 'video%%s'")
    p.add_argument("--feature-max-abs", type=float, default=DEFAULT_MAX_ABS,
                   help="refuse finite feature values beyond this magnitude as corrupt (default %(default)g)")


def add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
