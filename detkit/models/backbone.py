"""Backbones built from scratch: CSPDarknet (YOLO), VGG16-BN and MobileNetV2 (SSD): normalised
``[B, 3, H, W]`` -> maps finest first (``out_channels``, ``out_strides``); downsampling rounds
up, so stride ``s`` gives ``ceil(H / s) x ceil(W / s)`` and priors need no forward pass."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from detkit.models.blocks import (
    CSP_BLOCKS,
    SPPF,
    ConvBNAct,
    ConvBNReLU6,
    InvertedResidual,
    make_divisible,
)
from detkit.models.transfer import state_mismatches

log = logging.getLogger(__name__)


def scale_depth(n: int, depth_mult: float) -> int:
    """Blocks in a stage after depth scaling: ``max(round(n * depth_mult), 1)``."""
    return max(round(n * depth_mult), 1)


class CSPDarknet(nn.Module):
    """YOLOv5-style backbone: stride-2 stem, four stride-2 stages of CSP blocks (``block`` ``"c3"``
    or ``"c2f"``), SPPF on top; maps at strides 8, 16, 32. Stage ``i`` (1..4) has ``widths[i]``
    channels (rounded to multiples of 8 after ``width_mult``) and ``depths[i - 1]`` bottlenecks
    (scaled by ``depth_mult``)."""

    out_strides = (8, 16, 32)

    def __init__(
        self,
        widths: list[int],
        depths: list[int],
        width_mult: float,
        depth_mult: float,
        block: str = "c3",
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(depths) != 4:
            raise ValueError(f"need 5 widths and 4 depths, got {widths} and {depths}")
        ch = [make_divisible(c * width_mult) for c in widths]
        self.stem = ConvBNAct(3, ch[0], kernel=3, stride=2)
        stages = []
        for i in range(1, 5):
            layers: list[nn.Module] = [
                ConvBNAct(ch[i - 1], ch[i], kernel=3, stride=2),
                CSP_BLOCKS[block](ch[i], ch[i], scale_depth(depths[i - 1], depth_mult)),
            ]
            if i == 4:
                layers.append(SPPF(ch[i], ch[i]))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = ch[2:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs


def _vgg_block(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
        layers.append(nn.ReLU(inplace=True))
        c_in = c_out
    return layers


class VGG(nn.Module):
    """VGG16 with batch norm (so it trains from scratch) as SSD300 uses it: conv1..conv5, fc6 (3x3,
    dilation 6) and fc7 (1x1) as convs, pool5 3x3 stride 1; returns conv4_3 (stride 8) and fc7
    (stride 16). ``width_mult`` scales every width (64 .. fc 1024)."""

    out_strides = (8, 16)

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        c = [make_divisible(w * width_mult) for w in (64, 128, 256, 512, 512, 1024)]
        pool = functools.partial(nn.MaxPool2d, 2, 2, ceil_mode=True)
        self.conv4_3 = nn.Sequential(
            *_vgg_block(3, c[0], 2),
            pool(),
            *_vgg_block(c[0], c[1], 2),
            pool(),
            *_vgg_block(c[1], c[2], 3),
            pool(),
            *_vgg_block(c[2], c[3], 3),
        )
        self.fc7 = nn.Sequential(
            pool(),
            *_vgg_block(c[3], c[4], 3),
            nn.MaxPool2d(3, 1, padding=1),
            nn.Conv2d(c[4], c[5], 3, padding=6, dilation=6, bias=False),
            nn.BatchNorm2d(c[5]),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[5], c[5], 1, bias=False),
            nn.BatchNorm2d(c[5]),
            nn.ReLU(inplace=True),
        )
        self.out_channels = [c[3], c[5]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c4 = self.conv4_3(x)
        return [c4, self.fc7(c4)]


# MobileNetV2 stages: (expansion t, channels c, blocks n, stride s)
_MOBILENETV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
_MOBILENETV2_TOP = ((6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 returning the stride-16 map (after the 96-channel stage) and the stride-32 map
    (after the 1x1 conv to 1280 channels); ``width_mult`` scales all but the 1280 (as the paper
    below 1)."""

    out_strides = (16, 32)

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        c_in = make_divisible(32 * width_mult)
        parts: list[list[nn.Module]] = [[ConvBNReLU6(3, c_in, 3, stride=2)], []]
        channels = []
        for part, stages in zip(parts, (_MOBILENETV2, _MOBILENETV2_TOP), strict=True):
            for t, c, n, s in stages:
                c_out = make_divisible(c * width_mult)
                for i in range(n):
                    part.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                    c_in = c_out
            channels.append(c_in)
        last = make_divisible(1280 * max(1.0, width_mult))
        self.c4 = nn.Sequential(*parts[0])
        self.c5 = nn.Sequential(*parts[1], ConvBNReLU6(c_in, last, 1))
        self.out_channels = [channels[0], last]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c4 = self.c4(x)
        return [c4, self.c5(c4)]


BACKBONES = {"vgg16": VGG, "mobilenetv2": MobileNetV2}


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load backbone weights from a local file, ``weights_only=True`` (:func:`backbone_state`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"backbone_weights: cannot read {path} as weights ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); detkit reads state dicts with "
            "weights_only=True"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"backbone_weights: {path} holds a {type(state).__name__}, not a state dict"
        )
    backbone_state(backbone, state, path)
    log.info("loaded backbone weights from %s", path)


def backbone_state(backbone: nn.Module, state: dict, source: str | Path) -> int:
    """Load ``state`` into ``backbone`` strictly; return the number of tensors loaded. ``state``
    is its state dict, or holds it under ``"backbone"``, ``"state_dict"``, ``"ema"`` or
    ``"model"`` (a detkit checkpoint: its ``backbone.`` entries); a torchvision classifier's keys
    (``head_keys``) are ignored. ``ValueError`` names the first mismatches."""
    for key in ("backbone", "state_dict", "ema", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    head = tuple(getattr(backbone, "head_keys", ()))
    if head:  # a torchvision classifier's own head: not part of the backbone
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    problems = state_mismatches(backbone.state_dict(), state, "file vs backbone", shown=4)
    if problems:
        name = getattr(backbone, "name", type(backbone).__name__)
        raise ValueError(
            f"backbone_weights: {source} does not fit the {name} backbone: {'; '.join(problems)}"
        )
    backbone.load_state_dict(state, strict=True)
    return len(state)
