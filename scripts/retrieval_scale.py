"""Time and peak memory of ``nar-caption-retrieve`` on a synthetic corpus of COCO size.

    python scripts/retrieval_scale.py --out /tmp/retrieval_scale            # COCO size (defaults)
    python scripts/retrieval_scale.py --out /tmp/rs --images 3000 --backend faiss   # a quick check

Writes a synthetic captioning data folder (Karpathy COCO's shape by default: 123,287 images,
5 captions each, train = all but 5,000 val + 5,000 test, so ≈ 566 k training sentences; 1280-d
features, EfficientNet-Lite0's width; a 10 k-word vocabulary in 100 topics), then runs the
retrieval CLI in a child process (``--splits train,val,test --k 20``) and reports its wall
time and peak resident memory (the child's ``ru_maxrss``: the corpus generation is not counted).
The features are stored as one pooled vector per image (``--tokens 1``): retrieval mean-pools
anyway, and 49-token grids would make the synthetic store 30 GB.  Prints and writes
``OUT/report.json``.  Run it on a quiet machine: the timing is the point.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def build(out: str, images: int, captions: int, dim: int, tokens: int, vocab: int, topics: int, seed: int,
          eval_images: int) -> dict:
    import h5py

    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, topics, images)
    centres = rng.normal(size=(topics, dim)).astype(np.float32)
    per_topic = vocab // (topics + 1)  # topic words; the last block: words shared by every topic
    shared = np.arange(topics * per_topic, vocab)
    zipf = 1.0 / np.arange(1, len(shared) + 1)
    zipf /= zipf.sum()
    with h5py.File(os.path.join(out, "features.h5.tmp"), "w") as f:
        for start in range(0, images, 4096):
            n = min(4096, images - start)
            x = centres[topic[start:start + n]][:, None, :] + rng.normal(size=(n, tokens, dim)).astype(np.float32)
            for k in range(n):
                f.create_dataset(str(start + k), data=x[k])
    os.replace(os.path.join(out, "features.h5.tmp"), os.path.join(out, "features.h5"))
    n_train = images - 2 * eval_images
    splits = {"train": range(0, n_train), "val": range(n_train, n_train + eval_images),
              "test": range(n_train + eval_images, images)}
    words = np.array([f"w{i}" for i in range(vocab)])
    for split, ids in splits.items():
        with open(os.path.join(out, f"{split}.tsv"), "w") as f:
            f.write("item_id\tcaption\n")
            for start in range(ids.start, ids.stop, 8192):
                stop = min(ids.stop, start + 8192)
                n = (stop - start) * captions
                t = np.repeat(topic[start:stop], captions)
                length = rng.integers(8, 13, n)
                own = t[:, None] * per_topic + rng.integers(0, per_topic, (n, 12))
                common = rng.choice(shared, size=(n, 12), p=zipf)
                w = np.where(rng.random((n, 12)) < 0.5, own, common)
                item = np.repeat(np.arange(start, stop), captions)
                f.writelines(f"{item[r]}\t{' '.join(words[w[r, :length[r]]])}\n" for r in range(n))
    with open(os.path.join(out, "dict.txt"), "w") as f:
        f.writelines(f"{w} 1\n" for w in words)
    return {"images": images, "train_images": n_train, "train_sentences": n_train * captions,
            "captions_per_image": captions, "dim": dim, "tokens": tokens, "vocab": vocab, "topics": topics}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the synthetic corpus and report.json")
    p.add_argument("--images", type=int, default=123287)
    p.add_argument("--eval-images", type=int, default=5000, help="val and test images each")
    p.add_argument("--captions", type=int, default=5, help="captions per image")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--topics", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", default="sparse", choices=["sparse", "faiss"])
    p.add_argument("--block-mb", type=float, default=256)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--reuse", action="store_true", help="keep a corpus already in --out")
    a = p.parse_args(argv)
    a.eval_images = min(a.eval_images, a.images // 10)
    corpus_file = os.path.join(a.out, "corpus.json")
    if a.reuse and os.path.isfile(corpus_file):
        corpus = json.load(open(corpus_file))
    else:
        t = time.time()
        corpus = build(a.out, a.images, a.captions, a.dim, a.tokens, a.vocab, a.topics, a.seed, a.eval_images)
        corpus["build_s"] = round(time.time() - t, 1)
        json.dump(corpus, open(corpus_file, "w"))
    cmd = [sys.executable, "-m", "fairseq_nar_caption.cli.retrieve", a.out, "--splits", "train,val,test",
           "--k", str(a.k), "--backend", a.backend, "--block-mb", str(a.block_mb),
           "--out", os.path.join(a.out, "retrieval.json")]
    t = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    report = {"corpus": corpus, "backend": a.backend, "block_mb": a.block_mb, "k": a.k,
              "retrieve_wall_s": round(wall, 1), "retrieve_peak_rss_mib": round(peak_kib / 1024, 1),
              "threads": os.environ.get("OMP_NUM_THREADS", "default"), "command": " ".join(cmd)}
    json.dump(report, open(os.path.join(a.out, "report.json"), "w"), indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
