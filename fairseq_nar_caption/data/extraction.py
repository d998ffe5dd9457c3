"""Feature extraction: a user's own images or videos → the feature stores the ``captioning`` task reads.

Output folder (``nar-caption-extract SOURCES --out DIR``)::

    features.h5              images: one float32 (N, D) dataset per item, key = item id
    appearance.h5, motion.h5 videos: one float32 (K, D) dataset per item in each
    extractor.json           the record: the extractor and its settings (also as HDF5 file
                             attributes of every store), the names of its stores and items file
    items.tsv                manifest stub: header ``item_id<TAB>caption``, one row per item,
                             captions left empty for the user to fill in (read_manifest refuses
                             an empty caption, so an unfilled stub cannot be trained on by mistake)

Item ids are file names without their extension (or the first column of a list file).

Inputs (``list_media``): a folder gives its files sorted by name (hidden files and subfolders
skipped); an entry that cannot be read (a dangling symlink, a symlink loop, no read permission,
a pipe or device) stops the run with one ``DataError`` naming it, before any work.  List files
are UTF-8 (a byte-order mark accepted).  Images (``load_image``) become 8-bit RGB: 16-bit
greyscale (PIL modes ``I;16*``, and ``I`` from a PNG when its values fit 16 bits) is scaled
to 8 bits (value // 257); 32-bit integer (``I``) and floating-point (``F``) images are refused
with one ``DataError`` naming the file and the mode (there is no one right way to map them
to 8 bits); every other mode PIL decodes is converted with PIL (48-bit RGB PNGs are read as
RGB by PIL).

Outputs are never written over a file the extractor did not make.  Each output keeps its
default name when that name is free or holds our own output of the same settings:

- the stores (as a group): HDF5 files carrying our ``extractor_settings`` attribute with the
  same settings (then the run resumes / appends, see below), their ``.partial`` likewise;
- ``extractor.json``: our record with the same settings;
- ``items.tsv``: written by ``nar-caption-extract`` (the folder's ledger, ``files.py``),
  unchanged since, and no record of other settings names it.

Otherwise that output goes BESIDE the default one, under a name tagged with the settings
(``output_tag``): ``features.efficientnet-lite0-224.h5``, ``extractor.efficientnet-lite0-224.json``,
``items.efficientnet-lite0-224.tsv`` (videos add the frame count, ``-8f``; CLIP a prefix of its
weights' sha256), the same on every run of the same command, so a rerun resumes the same
tagged files.  A tagged name that is also taken by a file that is not ours (or ours with other
settings) is one ``OutputError``.  The record lists its actual store and items file names;
``find_record`` finds the record of a folder (of given store names) among ``extractor.json``
and ``extractor.*.json``.  Nothing is ever deleted or renamed that is not ours.

The extractors themselves (``--backbone efficientnet-lite0 | clip``) are in
``models/modules/extractors.py``; this module takes any object with their interface
(``settings``, ``info``, ``__call__(images) -> (grid, pooled)``).

Videos (``--media video``): K + 1 frames (``--frames K``, default 8, NACF's K) at the segment
centres over all decoded frames (``frame_sampling.segment_frame_indices``), decoded with PyAV;
``appearance`` row t = pooled feature of frame t + 1, ``motion`` row t = appearance of frame
t + 1 minus that of frame t, each (K, D), so ``--feature-files appearance.h5,motion.h5`` gives
the NACF models two modalities of K vectors, as the toy videos (``data/toy``) are laid out.

Writing: features go into ``<store>.partial`` files; each item's dataset is created whole
(``create_dataset(data=...)``), then marked with the attribute ``complete``, and the file is
flushed after every batch.  Before each batch is written the room for it is checked (the
process's file-size limit, then the bytes reserved for a moment: ``room_problem``): a full disk
or quota stops the run with one ``OutputError`` before HDF5 writes into a file it cannot finish
(a failed HDF5 write can damage the whole file).
A run that stops (Ctrl-C, SIGTERM, a bad input file, a full disk, a crash) leaves only partial
files: when it completed items they are kept and running the same command again drops any
dataset without the mark and continues; when it completed none, the partial stores it created
are removed (and a finished store it had reopened to append to gets its name back).  A write
that fails anyway (the disk filled up between the check and the write) is one ``OutputError``
too; a partial store it left unreadable is removed and the error says so (the HDF5 library may
then crash when the process exits: ``nar-caption-extract`` ends at once after its one line).  Batches
are fixed slices of the item list, so a resumed run computes every item in the same batch as
an uninterrupted run and the stores end up identical.  When every item is done the partial
files are renamed to their final names: a final store is never half-written; the record and
the items file are written atomically (``files.atomic_write_text``) and entered in the folder's
ledger.  Files that are not a decodable image / video stop the run with one ``DataError``
naming the file; nothing is written for it (and nothing is ever replaced by zeros).
"""
from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError, OptionError, OutputError
from ..files import atomic_write_text, check_writable_folder, load_json, made_by, read_text
from .feature_store import check_feature_values
from .images import load_image
from .frame_sampling import segment_frame_indices

RECORD_FILE = "extractor.json"
ITEMS_FILE = "items.tsv"
IMAGE_STORES = ("features.h5",)
VIDEO_STORES = ("appearance.h5", "motion.h5")
PARTIAL = ".partial"
EXTRACTOR = "nar-caption-extract"
FORMAT = 1
MEDIA = ("image", "video")
LIST_SUFFIXES = (".txt", ".lst", ".list")


# ----------------------------------------------------------------------------- inputs
def _item_id(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def media_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be read as an image / video file, or None when it can."""
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as e:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            if e.errno == errno.ELOOP:
                return f"a symlink loop ({os.path.basename(path)} -> {target} never reaches a file)"
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return f"a dangling symlink (its target {target} does not exist)"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "file not found"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, expected an image / video file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def _folder_media(src: str) -> List[Tuple[str, str]]:
    try:
        names = sorted(n for n in os.listdir(src) if not n.startswith("."))
    except OSError as e:
        raise DataError(f"{src}: cannot list the folder ({e.strerror})") from None
    out = []
    for n in names:
        path = os.path.join(src, n)
        if os.path.isdir(path):  # subfolders are not entered
            continue
        problem = media_problem(path)
        if problem:
            raise DataError(f"{path}: {problem}; fix it or move it out of {src}")
        out.append((_item_id(n), path))
    return out


def _list_file_media(src: str) -> List[Tuple[str, str]]:
    base = os.path.dirname(os.path.abspath(src))
    out = []
    for lineno, line in enumerate(read_text(src, "list").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item, path = line.split("\t", 1) if "\t" in line else (None, line.strip())
        path = path if os.path.isabs(path) else os.path.join(base, path)
        problem = media_problem(path)
        if problem:
            raise DataError(f"{src}:{lineno}: {path}: {problem}")
        out.append((item.strip() if item is not None else _item_id(path), path))
    return out


def list_media(sources: Sequence[str]) -> List[Tuple[str, str]]:
    """(item id, path) of every input, in order.  A source is a folder (its non-hidden files,
    sorted by name; subfolders are not entered; an entry that cannot be read, such as a dangling
    symlink or a symlink loop, is one DataError naming it), a list file (``.txt``/``.lst``/
    ``.list``, UTF-8, a byte-order mark accepted: one path, or ``item_id<TAB>path``, per line;
    relative paths are relative to the list file; blank lines and ``#`` comments skipped), or a
    single image / video file."""
    out: List[Tuple[str, str]] = []
    for src in sources:
        if os.path.isdir(src):
            out.extend(_folder_media(src))
        elif os.path.isfile(src) and src.endswith(LIST_SUFFIXES):
            out.extend(_list_file_media(src))
        elif os.path.lexists(src):
            problem = media_problem(src)
            if problem:
                raise DataError(f"{src}: {problem}")
            out.append((_item_id(src), src))
        else:
            raise DataError(f"{src}: no such file or folder")
    seen: Dict[str, str] = {}
    for item, path in out:
        if not item or "/" in item or "\t" in item or "\n" in item:
            raise DataError(f"{path}: item id {item!r} cannot be an HDF5 key / manifest id")
        if item in seen:
            raise DataError(f"{path}: item id {item!r} also belongs to {seen[item]} (ids are file names "
                            f"without extension; give ids in a list file)")
        seen[item] = path
    if not out:
        raise DataError(f"{', '.join(sources)}: no input files")
    return out


def load_video_frames(path: str, num_frames: int) -> list:
    """``num_frames`` RGB PIL frames at the segment centres over all decoded frames (PyAV),
    or one DataError naming the file.  Two passes: count the frames, then convert the chosen
    ones (only those are kept in memory)."""
    import av

    def decoded():
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: not a decodable video (no video stream)")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame

    try:
        total = sum(1 for _ in decoded())
        if total < 2:
            raise DataError(f"{path}: not a decodable video ({total} frame(s) decoded; motion needs at least 2)")
        wanted = segment_frame_indices(total, num_frames).tolist()
        frames, need = [], set(wanted)
        for k, frame in enumerate(decoded()):
            if k in need:
                frames.append((k, frame.to_image().convert("RGB")))
        by_index = dict(frames)
        if len(by_index) != len(need):  # the second decode gave fewer frames than the first
            raise DataError(f"{path}: not a decodable video (frame count changed between two decodes)")
        return [by_index[k] for k in wanted]
    except av.FFmpegError as e:  # its message repeats the path: keep the reason only
        raise DataError(f"{path}: not a decodable video ({getattr(e, 'strerror', None) or e})") from None


# ----------------------------------------------------------------------------- records
def record_settings(extractor, media: str, frames: int) -> dict:
    """What makes two feature stores comparable: the backbone's settings + media (+ K)."""
    if media not in MEDIA:
        raise OptionError(f"unknown --media {media!r} ({', '.join(MEDIA)})")
    s = dict(extractor.settings, media=media)
    if media == "video":
        s.update(frames=frames, frame_sampling="K + 1 segment centres over all decoded frames (PyAV)",
                 appearance="pooled feature of frames 1..K", motion="appearance of frame t+1 minus frame t")
    return s


def stores_of(media: str) -> Tuple[str, ...]:
    return VIDEO_STORES if media == "video" else IMAGE_STORES


def _check_record(rec, path: str) -> dict:
    if not isinstance(rec, dict) or rec.get("extractor") != EXTRACTOR or not isinstance(rec.get("settings"), dict) \
            or not isinstance(rec.get("stores"), list) or not all(isinstance(s, str) for s in rec["stores"]):
        raise DataError(f"{path}: not an extractor record written by {EXTRACTOR}")
    return rec


def read_record(folder: str) -> Optional[dict]:
    """``folder/extractor.json``, or None when the folder has none (``find_record`` also finds
    the records written beside it under tagged names)."""
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    return _check_record(load_json(path, "extractor record"), path)


def record_files(folder: str) -> List[str]:
    """The candidate record files of a folder: ``extractor.json`` first, then ``extractor.*.json``."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    tagged = sorted(n for n in names if n.startswith("extractor.") and n.endswith(".json") and n != RECORD_FILE)
    return [os.path.join(folder, n) for n in ([RECORD_FILE] if RECORD_FILE in names else []) + tagged]


def list_records(folder: str) -> List[Tuple[str, dict]]:
    """(path, record) of every extractor record of ``folder``; a file under such a name that is
    not one of ours (another program's ``extractor.json``) is passed over."""
    out = []
    for path in record_files(folder):
        if not os.path.isfile(path):
            continue
        try:
            out.append((path, _check_record(load_json(path, "extractor record"), path)))
        except DataError:
            continue
    return out


def describe_records(records: Sequence[Tuple[str, dict]]) -> str:
    return "; ".join(f"{os.path.basename(p)} ({','.join(r['stores'])}: {output_tag(r['settings'])})"
                     for p, r in records)


def find_record(folder: str, stores: Optional[Sequence[str]] = None) -> Optional[Tuple[str, dict]]:
    """The (path, record) of ``folder`` that describes ``stores`` (file names or paths; their base
    names are matched against each record's store names), or None when no record does.  Without
    ``stores``: the folder's only record, None when it has none, a DataError listing the records
    when it has several."""
    records = list_records(folder)
    if stores is None:
        if len(records) > 1:
            raise DataError(f"{folder}: holds {len(records)} extractor records: {describe_records(records)}; "
                            f"name the feature files the model reads (--feature-files) to choose")
        return records[0] if records else None
    names = [os.path.basename(s) for s in stores]
    hits = [(p, r) for p, r in records if set(names) <= set(r["stores"])]
    if len(hits) > 1:  # an older record still names the stores: the one whose settings they carry
        store = os.path.join(folder, names[0])
        try:
            carried = read_store_settings(store) if os.path.isfile(store) else None
        except DataError:
            carried = None
        hits = [(p, r) for p, r in hits if r["settings"] == carried] or hits
    if len(hits) > 1:
        raise DataError(f"{folder}: {len(hits)} extractor records name {', '.join(names)}: "
                        f"{describe_records(hits)}; remove the stale one")
    return hits[0] if hits else None


def read_store_settings(path: str) -> Optional[dict]:
    """The extractor settings an HDF5 store carries as file attributes (None: it carries none)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            s = f.attrs.get("extractor_settings")
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e})") from None
    return None if s is None else json.loads(s)


def store_ids(path: str) -> List[str]:
    """The item ids a feature store holds, sorted: an HDF5 file's top-level datasets, or the
    ``.npy`` names of a folder (the items of a store made by ``extract``)."""
    if os.path.isdir(path):
        return sorted(n[:-4] for n in os.listdir(path) if n.endswith(".npy"))
    import h5py

    try:
        with h5py.File(path, "r") as f:
            ids = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e})") from None
    if not ids:
        raise DataError(f"{path}: holds no feature datasets")
    return ids


def describe_mismatch(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)


def check_same_settings(expected: dict, found: dict, expected_where: str, found_where: str) -> None:
    if expected != found:
        raise DataError(f"{found_where}: made by another extractor than {expected_where} "
                        f"({describe_mismatch(found, expected)}): extract the inputs again with the settings "
                        f"of {expected_where}")


# ----------------------------------------------------------------------------- output names
def output_tag(settings: dict) -> str:
    """The settings in a file name: ``efficientnet-lite0-224``, ``clip-224-1a2b3c4d`` (a prefix of
    the weights' sha256), ``…-8f`` for videos of K = 8."""
    tag = f"{settings.get('backbone')}-{settings.get('image_size')}"
    if settings.get("weights_sha256"):
        tag += f"-{str(settings['weights_sha256'])[:8]}"
    if settings.get("media") == "video":
        tag += f"-{settings.get('frames')}f"
    return re.sub(r"[^A-Za-z0-9._-]", "_", tag)


def tagged_name(name: str, tag: str) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem}.{tag}{ext}"


def _store_state(path: str, settings: dict) -> Tuple[str, str]:
    """("free" | "same" | "other" | "foreign", why) of a store name: free, our store of these
    settings, ours of other settings, or a file we did not make."""
    import h5py

    if not os.path.lexists(path):
        return "free", ""
    if os.path.islink(path) or not os.path.isfile(path):
        return "foreign", f"{path} is not a regular file"
    try:
        with h5py.File(path, "r") as f:
            ours, found = f.attrs.get("extractor"), f.attrs.get("extractor_settings")
    except OSError:
        return "foreign", f"{path} is not an HDF5 store of {EXTRACTOR}"
    if ours != EXTRACTOR or found is None:
        return "foreign", f"{path} was not made by {EXTRACTOR}"
    try:
        found = json.loads(found)
    except ValueError:
        return "foreign", f"{path} carries unreadable extractor settings"
    if found != settings:
        return "other", f"{path} holds features of another extractor " \
                        f"({describe_mismatch(found, settings)}, there vs asked)"
    return "same", ""


def _stores_usable(folder: str, names: Sequence[str], settings: dict) -> Tuple[bool, str]:
    for n in names:
        for p in (os.path.join(folder, n), os.path.join(folder, n + PARTIAL)):
            state, why = _store_state(p, settings)
            if state not in ("free", "same"):
                return False, why
    return True, ""


def _record_state(path: str, settings: dict) -> Tuple[str, str]:
    if not os.path.lexists(path):
        return "free", ""
    if os.path.islink(path) or not os.path.isfile(path):
        return "foreign", f"{path} is not a regular file"
    try:
        rec = _check_record(load_json(path, "extractor record"), path)
    except DataError:
        return "foreign", f"{path} is not a record of {EXTRACTOR}"
    if rec["settings"] != settings:
        return "other", f"{path} records another extractor " \
                        f"({describe_mismatch(rec['settings'], settings)}, there vs asked)"
    return "same", ""


def _items_state(path: str, settings: dict) -> Tuple[str, str]:
    if not os.path.lexists(path):
        return "free", ""
    name = os.path.basename(path)
    if os.path.islink(path) or made_by(path) != EXTRACTOR:
        return "foreign", f"{path} was not written by {EXTRACTOR} (or was edited since)"
    for rp, rec in list_records(os.path.dirname(path)):
        if rec.get("items_file", ITEMS_FILE) == name and rec["settings"] != settings:
            return "other", f"{path} lists the items of {os.path.basename(rp)} (another extractor)"
    return "same", ""


@dataclass
class OutputNames:
    """Where one extraction writes, in its output folder."""
    stores: List[str]
    record: str
    items: str
    tag: str
    beside: List[Tuple[str, str, str]] = field(default_factory=list)  # (default name, why, name used)


def plan_outputs(folder: str, settings: dict) -> OutputNames:
    """The names an extraction of ``settings`` writes in ``folder`` (module docstring): the
    default ones where free or ours, else tagged ones; a tagged name taken by a file that is not
    ours (or ours of other settings) is one OutputError."""
    tag = output_tag(settings)
    beside = []

    def refuse(why_tagged, why_default):
        raise OutputError(f"{why_tagged}, and {why_default}; nothing was written: use another --out")

    defaults = list(stores_of(settings["media"]))
    ok, why = _stores_usable(folder, defaults, settings)
    stores = defaults
    if not ok:
        stores = [tagged_name(n, tag) for n in defaults]
        ok2, why2 = _stores_usable(folder, stores, settings)
        if not ok2:
            refuse(why2, why)
        beside.append((",".join(defaults), why, ",".join(stores)))
    names = []
    for default, state_of in ((RECORD_FILE, _record_state), (ITEMS_FILE, _items_state)):
        state, why = state_of(os.path.join(folder, default), settings)
        name = default
        if state not in ("free", "same"):
            name = tagged_name(default, tag)
            state2, why2 = state_of(os.path.join(folder, name), settings)
            if state2 not in ("free", "same"):
                refuse(why2, why)
            beside.append((default, why, name))
        names.append(name)
    return OutputNames(stores, names[0], names[1], tag, beside)


# ----------------------------------------------------------------------------- features
def item_features(extractor, media: str, paths: Sequence[str], frames: int = 8) -> List[List[np.ndarray]]:
    """Per path, the arrays of each store (images: [grid]; videos: [appearance, motion]),
    float32, computed in one backbone call for the whole batch."""
    if media == "image":
        grid, _ = extractor([load_image(p) for p in paths])
        out = [[g.numpy()] for g in grid]
    else:
        clips = [load_video_frames(p, frames + 1) for p in paths]
        _, pooled = extractor([im for c in clips for im in c])
        pooled = pooled.view(len(paths), frames + 1, -1).numpy()
        out = [[a[1:], a[1:] - a[:-1]] for a in pooled]
    for p, arrays in zip(paths, out):
        for a in arrays:  # NaN/Inf (a broken backbone): refused, never written
            check_feature_values(a, f"{p}: the backbone's output", max_abs=None)
    return [[np.ascontiguousarray(a, dtype=np.float32) for a in arrays] for arrays in out]


# ----------------------------------------------------------------------------- writing
ROOM_PER_DATASET = 2048  # HDF5 object header, attributes, B-tree share of one item's dataset
ROOM_MARGIN = 1 << 16  # metadata written at a flush


def room_problem(folder: str, needs: Sequence[Tuple[str, int]]) -> Optional[str]:
    """Why ``needs`` ((file, bytes it will grow by)) would not fit, or None when they fit: the
    process's file-size limit (``ulimit -f``), then the space itself, reserved for a moment in a
    scratch file of the folder (``posix_fallocate``: a full disk or a quota shows here); where
    the file system cannot reserve, its free space (``statvfs``)."""
    import tempfile

    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        unlimited = resource.RLIM_INFINITY
    except (ImportError, AttributeError, OSError, ValueError):
        soft = unlimited = None
    for path, need in needs:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if soft is not None and soft != unlimited and size + need > soft:
            return f"the file size limit of this process ({soft} bytes, ulimit -f) leaves no room for " \
                   f"{path} to grow by about {need} bytes"
    total = sum(n for _, n in needs)
    try:
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".nar-caption-room-")
    except OSError as e:
        return f"{e.strerror} in {folder}"
    try:
        os.posix_fallocate(fd, 0, total)
        return None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"{e.strerror}: no room for the next batch (about {total} bytes) in {folder}"
    except AttributeError:  # no posix_fallocate here
        pass
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(scratch)
    try:  # the file system cannot reserve: its free space
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    root = getattr(os, "geteuid", lambda: -1)() == 0  # root may use the reserved blocks
    free = (st.f_bfree if root else st.f_bavail) * st.f_frsize
    if total > free:
        return f"the disk is full ({free} bytes free, about {total} needed for the next batch)"
    return None


# HDF5 objects of a file a write failed on.  The HDF5 library reports the failure again when they
# are released, and can crash the process while releasing a dataset of such a file (h5py 3.12):
# they are kept for the life of the process (a command line ends with ``os._exit`` after its one line).
_FAILED_HDF5: list = []


class _WriteFailed(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(path)
        self.path, self.reason = path, reason


def _reason(exc: BaseException) -> str:
    """The cause of a failed HDF5 / OS write, short: its errno text when it carries one."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    m = re.search(r"error message = '([^']*)'", str(exc))
    return m.group(1) if m else str(exc).split("\n")[0][:200]


def _drop(exc: BaseException) -> str:
    """The reason of a failed HDF5 call; the HDF5 objects its traceback holds are released now
    (HDF5 reports a failure again while releasing them: see ``_muted_hdf5``)."""
    import traceback

    reason = _reason(exc)
    traceback.clear_frames(exc.__traceback__)
    return reason


@contextlib.contextmanager
def _muted_hdf5():
    """While HDF5 works on a file that may fail to take a write: h5py reports some failures only
    from destructors (a traceback printed on stderr, then ``sys.unraisablehook``); both are
    caught here (the reasons, in the list yielded) instead of being printed."""
    seen: List[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(_drop(u.exc_value) if u.exc_value is not None else "?")
    saved = None
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        yield seen
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        sys.unraisablehook = hook


@contextlib.contextmanager
def _writing(path: str):
    """One HDF5 write into ``path``: a failure, raised (OSError / RuntimeError) or only reported
    from a destructor, is a ``_WriteFailed`` (nothing more may be done with the file)."""
    failure = None
    with _muted_hdf5() as seen:
        try:
            yield
        except (OSError, RuntimeError) as e:
            failure = _drop(e)
    if failure or seen:
        raise _WriteFailed(path, failure or seen[0])


def _close_quietly(files) -> None:
    """Close HDF5 files after a failed write (HDF5 reports the failure again while closing)."""
    with _muted_hdf5():
        for f in files:
            with contextlib.suppress(Exception):
                f.close()
        gc.collect()


def _complete_items(path: str, fresh_process: bool = False) -> Optional[int]:
    """Items marked complete in a partial store; None when it cannot be read (damaged).
    ``fresh_process``: read it in a new Python process (after a failed write this process's
    HDF5 library still holds the file open and would answer from its own broken state)."""
    if fresh_process:
        import subprocess

        code = ("import sys, h5py\nwith h5py.File(sys.argv[1], 'r') as f:\n"
                "    print(sum(1 for k in f if f[k].attrs.get('complete', False)))")
        try:
            p = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120)
            return int(p.stdout.strip()) if p.returncode == 0 else None
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return sum(1 for k in f if f[k].attrs.get("complete", False))
    except (OSError, RuntimeError, KeyError):
        return None


def extract(items: Sequence[Tuple[str, str]], out_dir: str, extractor, media: str = "image", frames: int = 8,
            batch_size: int = 16, progress: bool = True, log: Optional[Callable[[str], None]] = None) -> dict:
    """Extract ``items`` ((id, path) pairs) into ``out_dir``; resumes an interrupted run.
    Returns the record written (``record_file`` / ``out_dir`` added: where it went).  ``log``
    (default: stderr) is told when an output goes beside a file that is not ours."""
    import h5py
    from tqdm import tqdm

    log = log or (lambda s: print(s, file=sys.stderr))
    if batch_size < 1 or frames < 1:
        raise OptionError(f"need --batch-size >= 1 and --frames >= 1, got {batch_size}, {frames}")
    items = list(items)
    if not items:
        raise DataError("no items to extract")
    settings = record_settings(extractor, media, frames)
    made_folder = not os.path.isdir(out_dir)
    if made_folder:
        if os.path.lexists(out_dir):
            raise OutputError(f"{out_dir}: exists and is not a folder; give a folder for --out")
        parent = os.path.dirname(os.path.abspath(out_dir))
        check_writable_folder(parent, out_dir)
        try:
            os.mkdir(out_dir)
        except OSError as e:
            raise OutputError(f"{out_dir}: cannot create the folder ({e.strerror})") from None
    try:
        check_writable_folder(out_dir)
        names = plan_outputs(out_dir, settings)
    except BaseException:
        if made_folder:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    for default, why, used in names.beside:
        log(f"{EXTRACTOR}: {why}; writing {used} beside it")
    finals = [os.path.join(out_dir, n) for n in names.stores]
    partials = [p + PARTIAL for p in finals]
    created: List[str] = []  # partial stores this run created
    reopened: List[Tuple[str, str]] = []  # (partial, final) of finished stores this run appends to
    files: list = []
    ds = None
    done_here = 0  # items this run completed
    try:
        problem = room_problem(out_dir, [(p, ROOM_MARGIN) for p in partials])
        if problem:
            raise OutputError(f"{partials[0]}: cannot write ({problem})")
        for final, partial in zip(finals, partials):
            if os.path.exists(final) and os.path.exists(partial):
                raise DataError(f"{final}: both it and {partial} exist; remove the one that is not wanted")
        for final, partial in zip(finals, partials):
            if os.path.exists(final):
                os.replace(final, partial)  # ours (plan_outputs): partial until every item is done again
                reopened.append((partial, final))
            elif not os.path.exists(partial):
                created.append(partial)
            try:
                files.append(h5py.File(partial, "a"))
            except OSError as e:  # e.g. open in another program (HDF5 locks files being read)
                if partial in created and not os.path.exists(partial):
                    created.remove(partial)
                raise DataError(f"{partial}: cannot be opened for writing ({e})") from None
        for f, name in zip(files, names.stores):
            attrs = {"extractor": EXTRACTOR, "extractor_settings": json.dumps(settings, sort_keys=True),
                     "backbone": settings["backbone"], "image_size": settings["image_size"],
                     "modality": os.path.splitext(name)[0].split(".")[0]}
            if media == "video":
                attrs["frames"] = frames
            with _writing(f.filename):
                for k, v in attrs.items():
                    if f.attrs.get(k) != v:  # a store reopened to append to is left as it was
                        f.attrs[k] = v
                for key in list(f.keys()):  # a dataset without its mark was being written when a run stopped
                    if not f[key].attrs.get("complete", False):
                        del f[key]
                f.flush()
        sources = {item: path for item, path in items}
        for f in files:
            for item, path in items:
                if item in f and f[item].attrs.get("source") != os.path.abspath(path):
                    raise DataError(f"{path}: item {item} is already in {f.filename} from another file "
                                    f"({f[item].attrs.get('source')}); use another --out or other ids")

        def done(item):
            return all(item in f for f in files)

        # progress: shown on a terminal only (disable=None), quiet in logs
        with tqdm(total=len(items), desc=f"extract {media}s", unit=media, disable=None if progress else True) as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start:start + batch_size]
                todo = [i for i, _ in batch if not done(i)]
                if todo:
                    arrays = item_features(extractor, media, [p for _, p in batch], frames)
                    new = [(item, per_store) for (item, _), per_store in zip(batch, arrays) if item in todo]
                    needs = [(f.filename, ROOM_MARGIN + sum(per_store[k].nbytes + ROOM_PER_DATASET
                                                            for item, per_store in new if item not in f))
                             for k, f in enumerate(files)]
                    problem = room_problem(out_dir, needs)
                    if problem:
                        raise OutputError(f"{partials[0]}: cannot write ({problem})")
                    for item, per_store in new:
                        for f, a in zip(files, per_store):
                            if item in f:
                                continue
                            with _writing(f.filename):
                                ds = f.create_dataset(item, data=a)
                                ds.attrs["source"] = os.path.abspath(sources[item])
                                ds.attrs["complete"] = True
                    for f in files:
                        with _writing(f.filename):
                            f.flush()
                    done_here += len(new)
                bar.update(len(batch))
        tokens = [int(files[k][items[0][0]].shape[0]) for k in range(len(files))]
        dim = int(files[0][items[0][0]].shape[1])
        total = len(files[0].keys())
        for f in files:
            with _writing(f.filename):
                f.close()
    except BaseException as e:
        failed = isinstance(e, _WriteFailed)
        if failed:
            _close_quietly(files)
            _FAILED_HDF5.append((list(files), ds))  # releasing these can crash HDF5: kept, see _FAILED_HDF5
        else:
            for f in files:
                with contextlib.suppress(Exception):
                    f.close()
        note = _abandon(partials, created, reopened, done_here, out_dir if made_folder else None, failed)
        if failed:
            err = OutputError(f"{e.path}: cannot write ({e.reason}); {note}")
            err.hdf5_write_failed = True  # the HDF5 library may not shut down cleanly after it (cli/extract.py)
            raise err from None
        if isinstance(e, OutputError):
            raise OutputError(f"{e}; {note}") from None
        if isinstance(e, KeyboardInterrupt):
            e.extraction_note = note  # the command line's one line (cli/extract.py)
        raise
    for final, partial in zip(finals, partials):
        os.replace(partial, final)
    record = {"extractor": EXTRACTOR, "format": FORMAT, "settings": settings, "stores": list(names.stores),
              "items_file": names.items, "info": dict(extractor.info), "tokens": tokens, "dim": dim, "items": total}
    atomic_write_text(os.path.join(out_dir, names.record), json.dumps(record, indent=1) + "\n", made_by=EXTRACTOR)
    atomic_write_text(os.path.join(out_dir, names.items),
                      "item_id\tcaption\n" + "".join(f"{item}\t\n" for item, _ in items), made_by=EXTRACTOR)
    return dict(record, record_file=names.record, out_dir=out_dir, beside=names.beside)


def _abandon(partials: Sequence[str], created: Sequence[str], reopened: Sequence[Tuple[str, str]],
             done_here: int, made_folder: Optional[str], write_failed: bool = False) -> str:
    """Tidy up after a run that stopped; returns what is left, for its one line.  Partial stores
    a failed write damaged are removed (they are ours and unreadable); when the run completed no
    item, the partial stores it created are removed and finished stores it reopened get their
    names back (unless a write into them failed: the next run checks them); otherwise the partial
    stores are kept for the next run to continue."""
    damaged = []
    for p in partials if write_failed else ():
        if os.path.exists(p) and _complete_items(p, fresh_process=True) is None:
            with contextlib.suppress(OSError):
                os.unlink(p)
                damaged.append(p)
    if done_here == 0:
        for p in created:
            with contextlib.suppress(OSError):
                os.unlink(p)
        for partial, final in reopened if not write_failed else ():  # after a failed write: partial
            if os.path.exists(partial) and not os.path.exists(final):
                with contextlib.suppress(OSError):
                    os.replace(partial, final)
    kept = [p for p in partials if os.path.exists(p)]
    if made_folder and not kept:
        with contextlib.suppress(OSError):
            os.rmdir(made_folder)  # only when empty
    lost = f"the failed write damaged {', '.join(damaged)}, which was removed; " if damaged else ""
    if kept:
        n = min(_complete_items(p, fresh_process=write_failed) or 0 for p in kept)
        return f"{lost}{n} finished item(s) are kept in {', '.join(kept)}: run the same command again to continue"
    return f"{lost}no features were kept" if lost else "nothing was written"
