"""The ``rdt_captioning`` task: ``captioning`` with ``--generator diffusion`` as the default.

Kept only so that command lines written for earlier versions still run; the retrieved-sentence
options (``--retrieval-file`` …) and the diffusion generator belong to the ``captioning`` task,
so ``--task captioning --generator diffusion --retrieval-file r.json`` trains and decodes the same
RDT model (checkpoints of either task load under both).
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
