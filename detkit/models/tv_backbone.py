"""ImageNet backbones from torchvision for the YOLO family (``backbone: resnet18`` ...), built by
``torchvision.models.get_model`` (never downloading) under torchvision's module names less the
classifier, so torchvision's state dicts load key for key."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchvisionSpec:
    """Where a torchvision classifier's stride-8/16/32 maps are: ``steps`` its forward order as
    ``(child name, index in it or None)``, ``taps`` the steps after which they are taken,
    ``head`` the classifier's state-dict key prefixes; ``pad_to``: pad inputs (bottom/right) to a
    multiple of this (ConvNeXt's unpadded stem and downsamplers round down)."""

    steps: tuple[tuple[str, int | None], ...]
    taps: tuple[int, int, int]
    channels: tuple[int, int, int]
    head: tuple[str, ...] = ("fc.", "classifier.")
    pad_to: int = 1


def _resnet(channels: tuple[int, int, int]) -> TorchvisionSpec:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return TorchvisionSpec(tuple((n, None) for n in names), (5, 6, 7), channels)


def _features(n: int, taps: tuple[int, int, int], channels: tuple[int, int, int], pad: int = 1):
    return TorchvisionSpec(tuple(("features", i) for i in range(n)), taps, channels, pad_to=pad)


# the torchvision backbones a YOLO model takes (``backbone=NAME``), by torchvision's names
TORCHVISION: dict[str, TorchvisionSpec] = {
    "resnet18": _resnet((128, 256, 512)),
    "resnet50": _resnet((512, 1024, 2048)),
    "mobilenet_v3_large": _features(17, (6, 12, 16), (40, 112, 960)),
    "efficientnet_b0": _features(9, (3, 5, 8), (40, 112, 1280)),
    "convnext_tiny": _features(8, (3, 5, 7), (192, 384, 768), pad=32),
}


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier less its classifier, random weights (:func:`load_pretrained`):
    ``[B, 3, H, W]`` ImageNet-normalised -> ``[B, channels[i], ceil(H / s), ceil(W / s)]`` for
    ``s`` in 8, 16, 32."""

    out_strides = (8, 16, 32)

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in TORCHVISION:
            raise ValueError(
                f"backbone {name!r} unknown; torchvision backbones: {', '.join(TORCHVISION)}"
            )
        from torchvision.models import get_model

        self.name, self.spec = name, TORCHVISION[name]
        net = get_model(name, weights=None)
        used = {child for child, _ in self.spec.steps}
        for child, module in net.named_children():
            if child in used:
                self.add_module(child, module)
        self.out_channels = list(self.spec.channels)
        self.head_keys = self.spec.head

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        pad = self.spec.pad_to
        if pad > 1 and (h % pad or w % pad):
            x = F.pad(x, (0, math.ceil(w / pad) * pad - w, 0, math.ceil(h / pad) * pad - h))
        outs = []
        for i, (child, index) in enumerate(self.spec.steps):
            module = self._modules[child]  # looked up each call: BN folding swaps children
            x = (module if index is None else module[index])(x)
            if i in self.spec.taps:
                outs.append(x)
        if pad > 1:  # the padded rows only add whole cells past ceil(H / s); drop them
            outs = [
                o[..., : math.ceil(h / s), : math.ceil(w / s)]
                for o, s in zip(outs, self.out_strides, strict=True)
            ]
        return outs


def pretrained_file(name: str) -> tuple[str, Path]:
    """``(url, cache path)`` of torchvision's default ImageNet weights for backbone ``name``."""
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_pretrained(backbone: TorchvisionBackbone, progress: bool = True) -> None:
    """Load torchvision's ImageNet weights from its cache, downloading them there when online
    (``FileNotFoundError`` naming the file and ``backbone_weights=`` otherwise)."""
    from detkit.models.backbone import backbone_state

    url, file = pretrained_file(backbone.name)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, weights_only=True
        )
    except (OSError, ValueError) as e:  # URLError is an OSError
        reason = str(getattr(e, "reason", "") or e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(
            f"pretrained=true: torchvision's {backbone.name} ImageNet weights are not in its "
            f"cache ({file}) and the download from {url} failed ({reason}); copy that file "
            f"there, or pass backbone_weights=FILE (a state dict of torchvision's {backbone.name})"
        ) from None
    backbone_state(backbone, state, file)
    log.info("loaded torchvision's ImageNet weights of %s from %s", backbone.name, file)
