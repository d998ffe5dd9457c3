"""Python API: load a trained caption model and caption feature arrays.

    from fairseq_nar_caption.hub import CaptionHub
    hub = CaptionHub.from_pretrained("runs/demo/ar/checkpoint_best.pt", data="data/toy/images")
    hub.caption([np.load("img.npy")])            # -> ["a red circle to the left of ..."]

``data`` is the folder the model was trained on (its dict.txt and feature layout);
``generate_args`` are fairseq-generate arguments (``--beam 5``, ``--generator …``).
Checkpoints load with torch's weights_only protection on (``checkpoint.py``).
"""
from typing import List, Sequence

import numpy as np
import torch

from . import inference
from .data.caption_dataset import collate_features


class CaptionHub:
    def __init__(self, loaded: "inference.Loaded"):
        self.loaded = loaded

    @classmethod
    def from_pretrained(cls, checkpoint: str, data: str, generate_args: Sequence[str] = ("--beam", "5"),
                        device: str = "cpu"):
        args = ["--path", checkpoint, *generate_args] + (["--cpu"] if device == "cpu" else [])
        return cls(inference.load(data, args, device=device))

    def caption(self, features: List[np.ndarray]) -> List[str]:
        """One caption per (N x D) feature array (as stored in the feature files)."""
        dim = self.loaded.task.feature_dim
        arrays = []
        for k, f in enumerate(features):
            a = torch.as_tensor(np.asarray(f, dtype=np.float32))
            if a.dim() != 2 or a.size(1) != dim:
                raise ValueError(f"features[{k}]: shape {tuple(a.shape)}, the model expects (N, {dim})")
            if not torch.isfinite(a).all():
                raise ValueError(f"features[{k}]: NaN/Inf values")
            arrays.append(a)
        feats, mask = collate_features(arrays)
        sample = {"id": torch.arange(len(arrays)), "nsentences": len(arrays),
                  "net_input": {"features": feats, "padding_mask": mask}}
        return inference.decode_batch(self.loaded, inference.to_device(sample, self.loaded.device))
