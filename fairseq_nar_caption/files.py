"""The user's files: text read one way, outputs written so that no file is ever destroyed.

Reading
- ``read_text(path, what)``: UTF-8 text.  A leading UTF-8 byte-order mark (what some editors and
  spreadsheet programs write) is accepted and dropped; a missing file, a folder, or a byte that is
  not UTF-8 is one ``DataError`` naming the file (and the line of the byte).
- ``load_json(path, what)``: ``read_text``, then JSON (invalid JSON: the line).

Writing: every file a command writes
- ``check_output(path, command, inputs, overwrite)``, called before any work: the folder exists and
  takes a file (a probe file is written and removed); the output is none of the command's inputs
  (even with ``--overwrite``) and lies in none of its input folders; an existing file is replaced
  only when the same command made it (the ledger below) or ``--overwrite`` says so.
- ``atomic_write_text`` / ``atomic_write_bytes`` / ``write_json`` / ``atomic_path``: the content goes to a temporary
  file with a name unique to the process (``mkstemp``) in the output's folder and is renamed over
  the final name only when whole; any failure (a full disk, permissions, Ctrl-C, SIGTERM) removes
  the temporary file and leaves the old file, or none, in place.  Write failures (``ENOSPC``,
  ``EROFS``, ``EACCES`` …) become one ``OutputError`` naming the file.
- the ledger ``.nar-caption-outputs.json``, one per folder: file name → the command that wrote it
  and the sha256 of what it wrote.  A file counts as made by a command while the ledger names the
  command and the file still holds what it wrote; a file edited by hand is the user's again.

This module imports only ``errors``.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from typing import Iterator, Optional, Sequence

from .errors import DataError, KnownError, OutputError

logger = logging.getLogger(__name__)

BOM = "\ufeff"
LEDGER = ".nar-caption-outputs.json"
# errors of a writer that mean "this location cannot take the output" (a full disk or quota, a
# read-only file system, a file-size limit, a failing device), as opposed to a bad input or a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


# ----------------------------------------------------------------------------- reading
def read_bytes(path: str, what: str) -> bytes:
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected a {what} file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file ({e.strerror})") from None


def decode_text(raw: bytes, path: str, what: str) -> str:
    """UTF-8 (a leading byte-order mark dropped), or one DataError naming the line of the bad byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                        f"re-encode the {what} file as UTF-8") from None
    return text[1:] if text.startswith(BOM) else text


def read_text(path: str, what: str) -> str:
    return decode_text(read_bytes(path, what), path, what)


def load_json(path: str, what: str):
    """A JSON file, or one DataError naming it: missing, not UTF-8, or invalid (with the line)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON in the {what} file ({e.msg})") from None


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the ledger
def _ledger_of(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), LEDGER)


def _read_ledger(ledger: str) -> dict:
    try:
        with open(ledger, encoding="utf-8") as f:
            doc = json.load(f)
        return doc.get("files", {}) if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: no file of the folder counts as ours
        return {}


def made_by(path: str) -> Optional[str]:
    """The command that wrote ``path``, while the file still holds what it wrote; else None."""
    entry = _read_ledger(_ledger_of(path)).get(os.path.basename(path))
    if not isinstance(entry, dict) or not os.path.isfile(path):
        return None
    try:
        return entry.get("command") if entry.get("sha256") == sha256_file(path) else None
    except OSError:
        return None


def record_output(path: str, command: str, digest: Optional[str] = None) -> None:
    """Enter ``path`` in its folder's ledger as made by ``command`` (under a lock on the folder, so
    that commands writing into one folder at once keep every entry).  A ledger that cannot be
    written is a warning (the output itself is whole): a later run then asks for ``--overwrite``."""
    import fcntl

    ledger = _ledger_of(path)
    digest = digest or sha256_file(path)
    try:
        folder = os.open(os.path.dirname(ledger), os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            files = _read_ledger(ledger)
            files[os.path.basename(path)] = {"command": command, "sha256": digest}
            _replace_with(ledger, json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True).encode())
        finally:
            os.close(folder)  # releases the lock
    except (OSError, KnownError) as e:
        logger.warning(f"{ledger}: cannot record {os.path.basename(path)} as made by {command} ({e})")


# ----------------------------------------------------------------------------- checks before work
def same_file(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable_folder(folder: str, for_path: Optional[str] = None) -> None:
    """The folder exists and takes a file: a probe is written and removed (permissions, a read-only
    file system or a file-size limit show here, before any work)."""
    name = for_path or folder
    if not os.path.exists(folder):
        raise OutputError(f"{name}: the folder {folder} does not exist; create it first")
    if not os.path.isdir(folder):
        raise OutputError(f"{name}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".nar-caption-probe-")
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{name}: cannot write in {folder} ({e.strerror})") from None


def check_output(path: str, command: str, inputs: Sequence[str] = (), overwrite: bool = False,
                 input_folders: Sequence[str] = (), overwrite_flag: Optional[str] = "--overwrite") -> str:
    """Refuse, before any work, an output that cannot or must not be written (see the module
    docstring); returns ``path``."""
    if not path:
        raise OutputError("an empty output path")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder; give a file name")
    for inp in inputs:
        if inp and same_file(path, inp):
            raise OutputError(f"{path}: is also an input of this command ({inp}); write the output elsewhere")
    folder = os.path.dirname(os.path.abspath(path))
    for f in input_folders:
        if f and os.path.isdir(f) and same_file(folder, f):
            raise OutputError(f"{path}: lies in the input folder {f}, where it would be read as an input next "
                              f"time; write the output elsewhere")
    if os.path.lexists(path) and not overwrite and made_by(path) != command:
        how = f"choose another output, or pass {overwrite_flag} to replace it" if overwrite_flag else \
            "choose another output"
        raise OutputError(f"{path}: already exists and was not made by {command}; {how}")
    check_writable_folder(folder, path)
    return path


# ----------------------------------------------------------------------------- atomic writing
def write_failure(path: str, e: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write ({e.strerror or e}); nothing was written under this name")


def _replace_with(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


@contextlib.contextmanager
def atomic_path(path: str, made_by: Optional[str] = None) -> Iterator[str]:
    """A temporary path (unique to the process, same folder and extension) for a writer that needs a
    file name (numpy, h5py, matplotlib); renamed to ``path`` when the block ends without error and
    entered in the ledger as ``made_by`` when given; removed on any error or interrupt."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=f".tmp{ext}")
        os.close(fd)
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        yield tmp
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            raise write_failure(path, e) from None
        raise
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the output from others
        digest = sha256_file(tmp) if made_by else None
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failure(path, e) from None
        raise
    if made_by:
        record_output(path, made_by, digest)


def atomic_write_bytes(path: str, data: bytes, made_by: Optional[str] = None) -> None:
    with atomic_path(path, made_by) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str, text: str, made_by: Optional[str] = None) -> None:
    """Write UTF-8 text via a temporary file and a rename (readers never see half a file; a failure
    leaves the old file, or none, in place)."""
    atomic_write_bytes(path, text.encode("utf-8"), made_by)


def write_json(path: str, obj, made_by: Optional[str] = None, indent: Optional[int] = 2) -> None:
    """``obj`` as UTF-8 JSON (``indent`` spaces; None: compact, for large files), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", made_by)
