"""fairseq_nar_caption: non-autoregressive captioning plugins for fairseq.

Install with ``make test`` / ``make demo`` (see README), which build .venv via
scripts/bootstrap.sh.  fairseq is deliberately NOT in install_requires: pip would
then re-resolve fairseq-fixed's own requirements and pull torchaudio (and a CUDA
torch).  The bootstrap installs fairseq-fixed with --no-deps and lists its
dependencies explicitly; this package is installed with ``pip install --no-deps -e .``.
"""
from setuptools import find_packages, setup

setup(
    name="fairseq_nar_caption",
    version="0.1.0",
    description="Non-autoregressive captioning (NACF, SAIC, NARVL, RDT) as fairseq plugins",
    packages=find_packages(include=["fairseq_nar_caption", "fairseq_nar_caption.*"]),
    python_requires=">=3.10",
    install_requires=["torch==2.13.0", "numpy", "h5py", "nltk", "pycocoevalcap==1.2", "sentencepiece", "pillow"],
    entry_points={
        "console_scripts": [
            "nar-caption-score=fairseq_nar_caption.cli.score:cli_main",
            "nar-caption-score-vl=fairseq_nar_caption.cli.score_vl:cli_main",
            "nar-caption-benchmark=fairseq_nar_caption.cli.benchmark:cli_main",
            "nar-caption-toy-data=fairseq_nar_caption.cli.make_toy_data:cli_main",
            "nar-caption-distill=fairseq_nar_caption.cli.distill:cli_main",
            "nar-caption-distill-vl=fairseq_nar_caption.cli.distill_vl:cli_main",
            "nar-caption-baselines=fairseq_nar_caption.cli.baselines:cli_main",
            "nar-caption-table=fairseq_nar_caption.cli.table:cli_main",
            "nar-caption-retrieve=fairseq_nar_caption.cli.retrieve:cli_main",
            "nar-caption-extract=fairseq_nar_caption.cli.extract:cli_main",
            "nar-caption-caption=fairseq_nar_caption.cli.caption:cli_main",
            "nar-caption-concepts=fairseq_nar_caption.cli.concepts:cli_main",
            "nar-caption-select-decoding=fairseq_nar_caption.cli.select_decoding:cli_main",
        ]
    },
)
