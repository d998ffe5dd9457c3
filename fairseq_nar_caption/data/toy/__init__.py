"""A synthetic captioning benchmark that a tiny model learns in minutes on a CPU.

Images of coloured shapes (with grid features, captions, VQA / grounding /
entailment items) and short clips of moving, growing, appearing, colour-changing
shapes (with appearance and motion features and captions), laid out like the
real COCO / MSR-VTT data so the same code paths consume them.  See
``build.generate`` and ``cli/make_toy_data.py``.
"""
from .build import ToyConfig, generate

__all__ = ["ToyConfig", "generate"]
