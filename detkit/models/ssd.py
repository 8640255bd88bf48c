"""SSD: default boxes over several feature maps, softmax over C classes plus background.

``forward`` returns ``[B, N, 5 + C]``: 4 :class:`~detkit.boxes.coder.SSDCoder` offsets, then
``C + 1`` logits, background first, rows in :func:`~detkit.boxes.coder.make_default_boxes` order.
``decode`` gives ``c = 1 - p_bg`` (summed over foreground, precise when ``p_bg`` is near 1) and
``p = p_fg / c``, so ``c * p = p_fg`` and the shared post-processing serves SSD unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detkit.boxes.coder import SSDCoder, make_default_boxes, ssd_decode
from detkit.models.backbone import BACKBONES
from detkit.models.blocks import ConvBNReLU6, make_divisible
from detkit.models.transfer import ClassRows
from detkit.models.yolo import IMAGENET_MEAN, IMAGENET_STD, GridModel


def _extra_block(c_in: int, c_out: int, lite: bool) -> nn.Sequential:
    """1x1 to ``c_out / 2``, then a stride-2 3x3 (depthwise + 1x1 when ``lite``):
    ``[B, c_in, H, W] -> [B, c_out, ceil(H/2), ceil(W/2)]``."""
    mid = c_out // 2
    if lite:
        return nn.Sequential(
            ConvBNReLU6(c_in, mid, 1),
            ConvBNReLU6(mid, mid, 3, stride=2, groups=mid),
            ConvBNReLU6(mid, c_out, 1),
        )
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _predictor(c_in: int, c_out: int, lite: bool) -> nn.Module:
    """A 3x3 conv predictor (depthwise 3x3 + BN + ReLU6, then 1x1, when ``lite``)."""
    if lite:
        return nn.Sequential(ConvBNReLU6(c_in, c_in, 3, groups=c_in), nn.Conv2d(c_in, c_out, 1))
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class SSD(nn.Module):
    """Single-shot multibox detector with a from-scratch ``backbone`` (``"vgg16"``: SSD300,
    ``"mobilenetv2"``: SSDLite) and C foreground classes (background added). ``extras``: base
    channels of the extra levels (scaled by ``width_mult``), each halving the resolution;
    ``scales``: default box sizes as fractions of ``min(H, W)``, one per level plus one;
    ``aspect_ratios``: per level, the ratios besides 1 (``2 + 2 * len`` boxes per cell); ``lite``:
    depthwise-separable extras and predictors; ``obj_prior``: the initial foreground
    probability, so the first loss is predictable."""

    prior_format = "ssd"  # priors rows: (cx, cy, w, h) input px
    # multi-scale training sizes; any input works (maps round up), 32 keeps backbone maps whole
    size_multiple = 32

    def __init__(
        self,
        num_classes: int,
        backbone: str,
        width_mult: float,
        extras: list[int],
        scales: list[float],
        aspect_ratios: list[list[float]],
        variances: tuple[float, float] = (0.1, 0.2),
        lite: bool = False,
        obj_prior: float = 0.01,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} unknown; choose one of {', '.join(BACKBONES)}")
        self.backbone = BACKBONES[backbone](width_mult)
        channels = list(self.backbone.out_channels)
        strides = list(self.backbone.out_strides)
        blocks = []
        for c in extras:
            c = make_divisible(c * width_mult)
            blocks.append(_extra_block(channels[-1], c, lite))
            channels.append(c)
            strides.append(strides[-1] * 2)
        self.extras = nn.ModuleList(blocks)
        levels = len(channels)
        if len(scales) != levels + 1 or len(aspect_ratios) != levels:
            raise ValueError(
                f"{levels} levels need {levels + 1} scales and {levels} aspect-ratio lists, "
                f"got {len(scales)} and {len(aspect_ratios)}"
            )
        self.num_classes = num_classes
        self.strides = strides
        self.scales = [float(s) for s in scales]
        self.aspect_ratios = [[float(r) for r in level] for level in aspect_ratios]
        self.boxes_per_cell = [2 + 2 * len(r) for r in self.aspect_ratios]
        self.coder = SSDCoder(tuple(variances))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.loc = nn.ModuleList(
            _predictor(c, a * 4, lite) for c, a in zip(channels, self.boxes_per_cell, strict=True)
        )
        self.conf = nn.ModuleList(
            _predictor(c, a * (num_classes + 1), lite)
            for c, a in zip(channels, self.boxes_per_cell, strict=True)
        )
        self._init_heads(obj_prior)

    def _init_heads(self, obj_prior: float) -> None:
        """Near-zero head weights; background bias so each box starts at foreground probability
        ``obj_prior`` shared by the C classes. std is 10x the grid heads' smaller because hard
        negative mining picks the largest logits: the first-step check must see the prior's loss."""
        bg = math.log((1 - obj_prior) * self.num_classes / obj_prior)
        for loc, conf, a in zip(self.loc, self.conf, self.boxes_per_cell, strict=True):
            for conv in (_last_conv(loc), _last_conv(conf)):
                nn.init.normal_(conv.weight, std=0.001)
                nn.init.zeros_(conv.bias)
            _last_conv(conf).bias.detach().view(a, self.num_classes + 1)[:, 0] = bg

    def class_rows(self) -> dict[str, ClassRows]:
        """Module name -> layout of the confidence predictors' last convs (background row 0)."""
        return {
            f"conf.{i}" if isinstance(conf, nn.Conv2d) else f"conf.{i}.{len(conf) - 1}": ClassRows(
                a, self.num_classes + 1, 1
            )
            for i, (conf, a) in enumerate(zip(self.conf, self.boxes_per_cell, strict=True))
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float RGB in [0, 1] -> raw ``[B, N, 5 + C]`` (rows in prior order)."""
        x = (images - self.mean) / self.std
        feats = self.backbone(x)
        x = feats[-1]
        for block in self.extras:
            x = block(x)
            feats.append(x)
        outs = []
        for f, loc, conf in zip(feats, self.loc, self.conf, strict=True):
            b = f.shape[0]
            box = loc(f).permute(0, 2, 3, 1).reshape(b, -1, 4)
            cls = conf(f).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes + 1)
            outs.append(torch.cat((box, cls), dim=2))
        return torch.cat(outs, dim=1)

    def decode(
        self, raw: torch.Tensor, priors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw output -> boxes ``[B, N, 4]`` xyxy input px, c ``[B, N]``, p ``[B, N, C]``."""
        raw = raw.float()
        max_log = math.log(1e3) / self.coder.variances[1]  # a box at most 1000x its prior
        deltas = torch.cat((raw[..., :2], raw[..., 2:4].clamp(max=max_log)), dim=-1)
        boxes = ssd_decode(deltas, priors, self.coder.variances)
        fg = raw[..., 4:].softmax(dim=-1)[..., 1:]
        c = fg.sum(dim=-1)
        return boxes, c, fg / c.clamp(min=1e-12).unsqueeze(-1)

    feature_sizes = GridModel.feature_sizes  # ``ceil(height / s) x ceil(width / s)`` per level

    def priors(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """Default boxes ``[N, 4]`` cxcywh input px in ``forward``'s row order, sizes
        ``scales * min(height, width)``."""
        side = min(height, width)
        return make_default_boxes(
            self.feature_sizes(height, width),
            (height, width),
            [s * side for s in self.scales],
            self.aspect_ratios,
            device=device,
        )


def _last_conv(module: nn.Module) -> nn.Conv2d:
    return module if isinstance(module, nn.Conv2d) else module[-1]
