"""Images or videos → the HDF5 feature stores the ``captioning`` task reads.

    nar-caption-extract photos/ --out data/mine                          # EfficientNet-Lite0, 224 px: 49 x 1280
    nar-caption-extract list.txt --out data/mine --backbone clip --clip-weights my-clip/
    nar-caption-extract clips/ --out data/clips --media video --frames 8  # appearance.h5 + motion.h5

SOURCES: folders (their files, sorted), list files (``.txt``/``.lst``: a path or
``item_id<TAB>path`` per line) or single files.  Writes ``OUT/features.h5`` (videos:
``appearance.h5``, ``motion.h5``), ``OUT/extractor.json`` and the manifest stub
``OUT/items.tsv``.  Interrupted?  Run the same command again: it continues where it stopped.
A file that is not a decodable image / video stops the run with one message naming it.
Details: ``fairseq_nar_caption/data/extraction.py``.
"""
import argparse
import logging
import sys

from ..data import extraction
from .common import add_device_arg, run_main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="folders, list files or image / video files")
    p.add_argument("--out", required=True, help="output folder (a data folder for the captioning task)")
    p.add_argument("--media", default="image", choices=extraction.MEDIA)
    p.add_argument("--backbone", default="efficientnet-lite0", choices=extraction.BACKBONES)
    p.add_argument("--image-size", type=int, default=224,
                   help="efficientnet-lite0: resize to S x S (224 → 7 x 7 grid)")
    p.add_argument("--clip-weights", default=None, help="--backbone clip: local folder of a saved CLIP (vision) model")
    p.add_argument("--frames", type=int, default=8, help="videos: K appearance and K motion vectors per video")
    p.add_argument("--batch-size", type=int, default=None,
                   help="items per backbone call (default 16 images or 2 videos; a video is K + 1 frames)")
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    items = extraction.list_media(a.sources)
    ex = extraction.build_extractor(a.backbone, a.image_size, a.clip_weights, a.device)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq leaves the root logger at DEBUG (hydra)
    batch = a.batch_size or (16 if a.media == "image" else 2)
    try:
        rec = extraction.extract(items, a.out, ex, a.media, a.frames, batch, progress=not a.no_progress)
    except KeyboardInterrupt:
        sys.exit(f"nar-caption-extract: interrupted; run the same command again to continue ({a.out})")
    shapes = ", ".join(f"{n} ({t} x {rec['dim']})" for n, t in zip(rec["stores"], rec["tokens"]))
    print(f"wrote {a.out}: {rec['items']} items, {shapes}, extractor.json, items.tsv")


def cli_main(argv=None) -> None:
    """Console entry: exit 0; a known error is one line and exit 1 (``common.run_main``)."""
    run_main(main, argv, "nar-caption-extract")


if __name__ == "__main__":
    cli_main()
