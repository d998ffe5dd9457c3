"""Caption images, videos or a feature file with a trained checkpoint.

    nar-caption-caption photos/ --path runs/mine/checkpoint_best.pt --data data/mine
    nar-caption-caption clip1.mp4 clip2.mp4 --path ckpt.pt --data data/clips --out clips.json
    nar-caption-caption --features new/features.h5 --path ckpt.pt --data data/mine
    nar-caption-caption photos/ --path nacf.pt --data data/mine -- --generator ct-mp --nar-iterations 2

INPUTS are folders, list files or image / video files, as for ``nar-caption-extract``;
item ids are the file names without extension.  ``--data`` is the folder the checkpoint
was trained on: its ``extractor.json`` (written by ``nar-caption-extract``) names the
extractor, which is run again here on ``--device`` (images or videos, whichever the model
was trained on); when the folder holds several records (``extractor.json`` and the tagged
``extractor.*.json`` an extraction writes beside files it did not make), the one naming the
model's ``--feature-files`` is used.  A feature file (``--features``, one per modality, comma-separated in the
order of the model's ``--feature-files``) must carry the same extractor record, or it is
refused.  Arguments after ``--`` go to fairseq-generate (default ``--beam 5``; e.g.
``--generator ct-mp`` for a NACF model).  Prints ``item_id<TAB>caption`` lines and writes
COCO results JSON (``[{"image_id": ..., "caption": ...}]``, what ``nar-caption-score
--results`` reads).

``--out`` is checked before the model is loaded (``files.check_output``): it is none of the
inputs (media, list files, checkpoint, feature files, the data folder's dictionary and
extractor records) and lies in none of the input folders; an existing file is replaced only
when ``nar-caption-caption`` wrote it (the folder's ledger) or with ``--overwrite``; its folder
must exist and be writable.  The file is written atomically: an interrupted or failed run leaves
the old file, or none.
"""
import logging
import os
import sys

from ..data import extraction
from ..errors import DataError
from ..files import check_output, write_json
from .common import add_device_arg, add_overwrite_arg, parser, positive_int, run_main

PROG = "nar-caption-caption"


def caption(inputs, path: str, data: str, features=None, generate_args=("--beam", "5"), device: str = "cpu",
            batch_size=None, clip_weights=None):
    """item id → caption (the CLI's work, without printing)."""
    from ..hub import CaptionHub

    if bool(inputs) == bool(features):
        raise DataError("give image / video INPUTS or --features, not both and not neither")
    logging.getLogger().setLevel(logging.WARNING)  # fairseq / hydra chatter off: captions are the output
    hub = CaptionHub.from_pretrained(path, data, generate_args, device=device, clip_weights=clip_weights)
    logging.getLogger().setLevel(logging.WARNING)  # loading leaves the root logger at DEBUG (hydra)
    if features:
        return hub.caption_feature_files(features.split(","))
    items = extraction.list_media(inputs)
    media = hub.media()
    paths = [p for _, p in items]
    caps = hub.caption_images(paths, batch_size or 16) if media == "image" else \
        hub.caption_videos(paths, batch_size or 2)
    return dict(zip([i for i, _ in items], caps))


def input_files(inputs, features, path: str, data: str):
    """(files, folders) this command reads: the media, list files, checkpoint and feature files,
    the data folder's dictionary, extractor records and their stores; the input folders."""
    files = [path] + list(features or [])
    folders = [s for s in inputs if os.path.isdir(s)]
    files += [s for s in inputs if not os.path.isdir(s)]
    if inputs:
        files += [p for _, p in extraction.list_media(inputs)]
    files.append(os.path.join(data, "dict.txt"))
    for rec_path, rec in extraction.list_records(data):
        files.append(rec_path)
        files += [os.path.join(data, s) for s in rec["stores"]]
    return files, folders


def main(argv=None):
    p = parser(__doc__, PROG)
    p.add_argument("inputs", nargs="*", help="folders, list files or image / video files")
    p.add_argument("--path", required=True, help="checkpoint (any model of this suite)")
    p.add_argument("--data", required=True, help="the data folder the checkpoint was trained on")
    p.add_argument("--features", default=None, help="caption the items of these feature files instead")
    p.add_argument("--out", default="captions.json", help="COCO results JSON (default captions.json)")
    add_device_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="items per extractor call (16 images / 2 videos)")
    p.add_argument("--clip-weights", default=None, help="CLIP weights folder, if not where extraction found it")
    add_overwrite_arg(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if bool(a.inputs) == bool(a.features):
        p.error("give image / video INPUTS or --features, not both and not neither")
    features = a.features.split(",") if a.features else None
    files, folders = input_files(a.inputs, features, a.path, a.data)
    check_output(a.out, PROG, inputs=files, overwrite=a.overwrite, input_folders=folders)
    caps = caption(a.inputs, a.path, a.data, a.features, extra or ["--beam", "5"], a.device, a.batch_size,
                   a.clip_weights)
    for item, c in caps.items():
        print(f"{item}\t{c}")
    write_json(a.out, [{"image_id": i, "caption": c} for i, c in caps.items()], made_by=PROG)
    print(f"wrote {a.out}: {len(caps)} captions", file=sys.stderr)


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, PROG)


if __name__ == "__main__":
    cli_main()
