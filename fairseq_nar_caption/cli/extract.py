"""Images or videos → the HDF5 feature stores the ``captioning`` task reads.

    nar-caption-extract photos/ --out data/mine                          # EfficientNet-Lite0, 224 px: 49 x 1280
    nar-caption-extract list.txt --out data/mine --backbone clip --clip-weights my-clip/
    nar-caption-extract clips/ --out data/clips --media video --frames 8  # appearance.h5 + motion.h5

SOURCES: folders (their files, sorted), list files (``.txt``/``.lst``: a path or
``item_id<TAB>path`` per line, UTF-8) or single files.  Writes ``OUT/features.h5`` (videos:
``appearance.h5``, ``motion.h5``), ``OUT/extractor.json`` and the manifest stub
``OUT/items.tsv``.  A file of that name that this extractor did not make (or made with other
settings) is left as it is: the new one goes beside it under a name tagged with the settings
(``features.efficientnet-lite0-224.h5`` …), and the last line says which ``--feature-files``
to train with.  ``--out`` is created when missing (its parent must exist); it cannot be one of
the input folders.  Interrupted (Ctrl-C: exit 130, SIGTERM: 143) or stopped by a full disk?
Run the same command again: it continues where it stopped.  A file that is not a decodable
image / video, or a folder entry that cannot be read, stops the run with one message naming it.
Details: ``fairseq_nar_caption/data/extraction.py``.
"""
import logging
import os
import sys

from ..data import extraction
from ..models.modules import extractors
from ..errors import OutputError
from ..files import same_file
from .common import (INTERRUPTED, add_device_arg, int_at_least, interrupt_status, one_line, parser, positive_int,
                     run_main, want_traceback)

PROG = "nar-caption-extract"
image_size = int_at_least(extractors.MIN_IMAGE_SIZE)


def check_out_folder(out: str, sources) -> None:
    """Before any work: ``--out`` is a folder (or can be made in an existing, writable parent)
    and none of the input folders."""
    from ..files import check_writable_folder

    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputError(f"{out}: exists and is not a folder; give a folder for --out")
    for src in sources:
        if os.path.isdir(src) and os.path.isdir(out) and same_file(src, out):
            raise OutputError(f"{out}: is also an input folder ({src}): the features would be read as "
                              f"inputs next time; use another --out")
    if os.path.isdir(out):
        check_writable_folder(out)
    else:
        check_writable_folder(os.path.dirname(os.path.abspath(out)), out)


def main(argv=None):
    p = parser(__doc__, PROG)
    p.add_argument("sources", nargs="+", help="folders, list files or image / video files")
    p.add_argument("--out", required=True, help="output folder (a data folder for the captioning task)")
    p.add_argument("--media", default="image", choices=extraction.MEDIA)
    p.add_argument("--backbone", default="efficientnet-lite0", choices=extractors.BACKBONES)
    p.add_argument("--image-size", type=image_size, default=224,
                   help="efficientnet-lite0: resize to S x S, S >= 32 (224 → 7 x 7 grid)")
    p.add_argument("--clip-weights", default=None, help="--backbone clip: local folder of a saved CLIP (vision) model")
    p.add_argument("--frames", type=positive_int, default=8, help="videos: K appearance and K motion vectors per video")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="items per backbone call (default 16 images or 2 videos; a video is K + 1 frames)")
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    check_out_folder(a.out, a.sources)
    items = extraction.list_media(a.sources)
    ex = extractors.build_extractor(a.backbone, a.image_size, a.clip_weights, a.device)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq leaves the root logger at DEBUG (hydra)
    batch = a.batch_size or (16 if a.media == "image" else 2)
    try:
        rec = extraction.extract(items, a.out, ex, a.media, a.frames, batch, progress=not a.no_progress)
    except KeyboardInterrupt as e:
        note = getattr(e, "extraction_note", None)
        if note is None:
            raise
        status = interrupt_status(e)
        sys.stderr.write(f"{PROG}: {INTERRUPTED[status]}; {note}\n")
        raise SystemExit(status) from None
    except OutputError as e:
        if not getattr(e, "hdf5_write_failed", False) or want_traceback():
            raise
        # after a failed write the HDF5 library can crash while the interpreter shuts down: the one
        # line, then exit at once (the partial stores are closed and checked already)
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: error: {one_line(e)}\n")
        sys.stderr.flush()
        os._exit(1)
    shapes = ", ".join(f"{n} ({t} x {rec['dim']})" for n, t in zip(rec["stores"], rec["tokens"]))
    line = f"wrote {a.out}: {rec['items']} items, {shapes}, {rec['record_file']}, {rec['items_file']}"
    files = ",".join(rec["stores"])
    if files != ",".join(extraction.IMAGE_STORES):  # not the captioning task's default
        line += f"; train with --feature-files {files}"
    print(line)


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1; Ctrl-C 130, SIGTERM 143
    (``common.run_main``)."""
    run_main(main, argv, PROG)


if __name__ == "__main__":
    cli_main()
