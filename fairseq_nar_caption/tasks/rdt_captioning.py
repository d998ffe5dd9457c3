"""The ``rdt_captioning`` task: ``captioning`` with ``--generator diffusion`` as the default.

Kept for RDT checkpoints and recipes that name it: the retrieved-sentence options
(``--retrieval-file`` …) and the diffusion generator's options now belong to the
``captioning`` task (and ``generators/options.py``), so ``--task captioning --generator
diffusion --retrieval-file r.json`` decodes the same model on the same data folder.
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from .captioning import CaptioningConfig, CaptioningTask


@dataclass
class RDTCaptioningConfig(CaptioningConfig):
    generator: str = field(default="diffusion", metadata={"help": "decoding algorithm (default: diffusion)"})


@register_task("rdt_captioning", dataclass=RDTCaptioningConfig)
class RDTCaptioningTask(CaptioningTask):
    cfg: RDTCaptioningConfig
