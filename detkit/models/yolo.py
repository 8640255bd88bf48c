"""Grid-cell detectors: the spine (``GridDetector``) and the YOLO n/s/m family (``YOLO``). Per
cell and prior the heads predict raw ``(x, y, w, h, confidence, class logits)``: ``forward``
returns ``[B, N, 5 + C]`` in :func:`detkit.boxes.coder.make_grid_priors` order in every mode."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from detkit.boxes.coder import grid_decode, make_grid_priors
from detkit.models.backbone import CSPDarknet, scale_depth
from detkit.models.blocks import CSP_BLOCKS, ConvBNAct, DWSeparable, Residual, make_divisible
from detkit.models.transfer import ClassRows
from detkit.models.tv_backbone import TorchvisionBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Stride-2 stages of ``widths`` channels; returns the maps at ``out_strides``, finest first."""

    def __init__(self, widths: list[int], out_strides: list[int]) -> None:
        super().__init__()
        stages, c_in = [], 3
        for i, c in enumerate(widths):
            layers: list[nn.Module] = [ConvBNAct(c_in, c, kernel=3, stride=2)]
            if i >= 2:  # residual refinement where the maps are small enough to afford it
                layers.append(Residual(c))
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.out_idx = [int(math.log2(s)) - 1 for s in out_strides]
        if any(i < 0 or i >= len(widths) for i in self.out_idx):
            raise ValueError(
                f"strides {out_strides} need {max(self.out_idx) + 1} stages, have {len(widths)}"
            )
        self.out_channels = [widths[i] for i in self.out_idx]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return [feats[i] for i in self.out_idx]


class TopDownNeck(nn.Module):
    """FPN-style: 1x1 laterals to ``width`` channels, coarse-to-fine upsample-and-add, 3x3 smooth."""

    def __init__(self, in_channels: list[int], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, width, kernel=1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBNAct(width, width, kernel=3) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [m(f) for m, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [m(x) for m, x in zip(self.smooth, lat, strict=True)]


class PAN(nn.Module):
    """FPN top-down (1x1 lateral, nearest upsample, concat, fuse) then PANet bottom-up (stride-2
    3x3, concat with the lateral, fuse) path, YOLOv5's neck; fuses with ``block`` (``depth``
    bottlenecks, no shortcuts). ``[B, in_channels[i], H_i, W_i]`` per level, finest first, kept."""

    def __init__(self, in_channels: list[int], depth: int = 1, block: str = "c3") -> None:
        super().__init__()
        csp = CSP_BLOCKS[block]
        ch = list(in_channels)
        levels = range(len(ch) - 1)
        self.lateral = nn.ModuleList(ConvBNAct(ch[i + 1], ch[i], kernel=1) for i in levels)
        self.top_down = nn.ModuleList(csp(2 * ch[i], ch[i], depth, shortcut=False) for i in levels)
        self.down = nn.ModuleList(ConvBNAct(ch[i], ch[i], kernel=3, stride=2) for i in levels)
        self.bottom_up = nn.ModuleList(
            csp(2 * ch[i], ch[i + 1], depth, shortcut=False) for i in levels
        )
        self.out_channels = ch

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = feats[-1]
        laterals: list[torch.Tensor] = []
        for i in range(len(feats) - 2, -1, -1):  # coarse to fine
            lat = self.lateral[i](x)
            laterals.insert(0, lat)
            up = F.interpolate(lat, size=feats[i].shape[-2:], mode="nearest")
            x = self.top_down[i](torch.cat((up, feats[i]), dim=1))
        outs = [x]
        for i in range(len(feats) - 1):  # fine to coarse
            x = self.bottom_up[i](torch.cat((self.down[i](x), laterals[i]), dim=1))
            outs.append(x)
        return outs


def grid_deltas(raw_box: torch.Tensor, xy_scale: float = 1.0) -> torch.Tensor:
    """Raw box outputs ``[..., 4]`` -> grid-coder deltas ``(ox, oy, tw, th)``: ``ox = xy_scale *
    sigmoid(x) - (xy_scale - 1) / 2``, in ``(-0.5, 1.5)`` for 2 (YOLOv5: a neighbouring cell can
    predict a centre just outside itself); ``tw, th`` pass through. ``decode`` and the criterion
    both call this, so the loss trains what is decoded."""
    xy = raw_box[..., :2].sigmoid()
    if xy_scale != 1.0:
        xy = xy * xy_scale - (xy_scale - 1.0) / 2
    return torch.cat([xy, raw_box[..., 2:4]], dim=-1)


HEAD_BRANCHES = ("conv", "dw_cls", "dw")


def _branch(c_in: int, width: int, depthwise: bool) -> nn.Sequential:
    """Two 3x3 ``ConvBNAct`` of ``width`` channels, or two depthwise-separable ones."""
    if depthwise:
        return nn.Sequential(DWSeparable(c_in, width), DWSeparable(width, width))
    return nn.Sequential(ConvBNAct(c_in, width, 3), ConvBNAct(width, width, 3))


class DecoupledHead(nn.Module):
    """Separate box+confidence and class branches, as in YOLOX/YOLOv8: ``[B, c_in, H, W] -> [B,
    A * (5 + C), H, W]``, laid out as the coupled 1x1 head's output. Each branch is two 3x3 convs
    of ``width`` channels; ``branches``: ``"conv"`` both full ``ConvBNAct``, ``"dw_cls"`` the
    class branch depthwise-separable (as YOLO11), ``"dw"`` both."""

    def __init__(
        self, c_in: int, width: int, num_anchors: int, num_classes: int, branches: str = "conv"
    ) -> None:
        super().__init__()
        if branches not in HEAD_BRANCHES:
            raise ValueError(f"head branches {branches!r} unknown; choose one of {HEAD_BRANCHES}")
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.box_branch = _branch(c_in, width, branches == "dw")
        self.cls_branch = _branch(c_in, width, branches != "conv")
        self.box = nn.Conv2d(width, num_anchors * 4, kernel_size=1)
        self.obj = nn.Conv2d(width, num_anchors, kernel_size=1)
        self.cls = nn.Conv2d(width, num_anchors * num_classes, kernel_size=1)

    def init_bias(self, obj_prior: float) -> None:
        """Confidence bias -> sigmoid = obj_prior; class logits and box outputs start near 0."""
        for conv in (self.box, self.obj, self.cls):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.obj.bias, math.log(obj_prior / (1 - obj_prior)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        a = self.num_anchors
        reg = self.box_branch(x)
        parts = (
            self.box(reg).view(b, a, 4, h, w),
            self.obj(reg).view(b, a, 1, h, w),
            self.cls(self.cls_branch(x)).view(b, a, self.num_classes, h, w),
        )
        return torch.cat(parts, dim=2).view(b, a * (5 + self.num_classes), h, w)


class GridModel(nn.Module):
    """What every grid-cell detector shares: levels and priors, the heads, decode. Subclasses
    build ``backbone``, ``adapt`` (per-level 1x1 projections, or None) and ``neck`` and call
    :meth:`_make_heads`; ``anchors``: per stride (finest first), ``A`` (w, h) input px."""

    prior_format = "grid"  # priors rows: (gx, gy, stride, anchor_w, anchor_h)

    def __init__(
        self,
        num_classes: int,
        strides: list[int],
        anchors: list[list[list[float]]],
        xy_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if len(anchors) != len(strides):
            raise ValueError(f"need one anchor list per stride: {len(anchors)} vs {len(strides)}")
        if len({len(level) for level in anchors}) != 1:
            raise ValueError(f"every level needs the same number of anchors, got {anchors}")
        self.num_classes = num_classes
        self.strides = list(strides)
        self.anchors = [[tuple(map(float, a)) for a in level] for level in anchors]
        self.num_anchors = len(anchors[0])
        self.xy_scale = float(xy_scale)
        self.adapt: nn.ModuleList | None = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _make_heads(
        self, channels: list[int], obj_prior: float, head_width: int = 0, branches: str = "conv"
    ) -> None:
        """Per level a 1x1 conv (``head_width=0``) or :class:`DecoupledHead` to ``A * (5 + C)``."""
        if head_width > 0:
            self.heads = nn.ModuleList(
                DecoupledHead(c, head_width, self.num_anchors, self.num_classes, branches)
                for c in channels
            )
            for head in self.heads:
                head.init_bias(obj_prior)
            return
        out = self.num_anchors * (5 + self.num_classes)
        self.heads = nn.ModuleList(nn.Conv2d(c, out, kernel_size=1) for c in channels)
        # objectness bias -> sigmoid = obj_prior; class logits equal, so the first CE is ln(C)
        for head in self.heads:
            bias = head.bias.detach().view(self.num_anchors, 5 + self.num_classes)
            bias.zero_()
            bias[:, 4] = math.log(obj_prior / (1 - obj_prior))
            nn.init.normal_(head.weight, std=0.01)

    def class_rows(self) -> dict[str, ClassRows]:
        """Module name -> layout of the layers with per-class output channels."""
        a, c = self.num_anchors, self.num_classes
        return {
            f"heads.{i}.cls" if isinstance(head, DecoupledHead) else f"heads.{i}": (
                ClassRows(a, c, 0) if isinstance(head, DecoupledHead) else ClassRows(a, 5 + c, 5)
            )
            for i, head in enumerate(self.heads)
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float RGB in [0, 1] -> raw ``[B, N, 5 + C]`` (rows in prior order)."""
        feats = self.backbone((images - self.mean) / self.std)
        if self.adapt is not None:
            feats = [a(f) for a, f in zip(self.adapt, feats, strict=True)]
        outs = []
        for head, f in zip(self.heads, self.neck(feats), strict=True):
            p = head(f)  # [B, A*(5+C), H, W], channels anchor-major
            b, _, h, w = p.shape
            outs.append(p.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, -1))
        return torch.cat(outs, dim=1)

    def decode(
        self, raw: torch.Tensor, priors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw output -> boxes ``[B, N, 4]`` xyxy input px, c ``[B, N]``, p ``[B, N, C]``."""
        raw = raw.float()
        boxes = grid_decode(grid_deltas(raw[..., :4], self.xy_scale), priors)
        return boxes, raw[..., 4].sigmoid(), raw[..., 5:].softmax(dim=-1)

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Grid size (H_l, W_l) of every level for an input of ``height x width`` px."""
        return [(math.ceil(height / s), math.ceil(width / s)) for s in self.strides]

    def priors(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """Grid priors ``[N, 5]`` (gx, gy, stride, anchor_w, anchor_h) matching ``forward``'s rows."""
        return make_grid_priors(
            self.feature_sizes(height, width), self.strides, self.anchors, device=device
        )


class GridDetector(GridModel):
    """The spine: a stride-2 backbone (stage widths ``widths``), a top-down neck of ``neck_width``
    channels and a 1x1 head per stride (initial objectness ``obj_prior``)."""

    def __init__(
        self,
        num_classes: int,
        widths: list[int],
        strides: list[int],
        anchors: list[list[list[float]]],
        neck_width: int = 64,
        obj_prior: float = 0.01,
    ) -> None:
        super().__init__(num_classes, strides, anchors, xy_scale=1.0)
        self.backbone = Backbone(widths, strides)
        self.neck = TopDownNeck(self.backbone.out_channels, neck_width)
        self._make_heads([neck_width] * len(strides), obj_prior)


class YOLO(GridModel):
    """The YOLO n/s/m family: CSPDarknet with SPPF (``widths``, ``depths`` scaled by
    ``width_mult``, ``depth_mult``; CSP ``block`` ``"c3"`` or ``"c2f"``), PAN neck (``depths[-1]``
    scaled), heads at strides 8, 16, 32, and ``2 * sigmoid - 0.5`` centre offsets so cells next
    to an object's centre cell train on it too. ``head_width``: 0 for coupled 1x1 heads, else the
    :class:`DecoupledHead` branch width. ``backbone``: "" for CSPDarknet, or a torchvision one
    (:data:`detkit.models.tv_backbone.TORCHVISION`), its maps projected to CSPDarknet's channels
    by a 1x1 ``ConvBNAct`` per level (``adapt``) so neck and heads are unchanged."""

    strides_fixed = CSPDarknet.out_strides

    def __init__(
        self,
        num_classes: int,
        widths: list[int],
        depths: list[int],
        width_mult: float,
        depth_mult: float,
        anchors: list[list[list[float]]],
        obj_prior: float = 0.01,
        head_width: int = 0,
        backbone: str = "",
        head_branches: str = "conv",
        block: str = "c3",
    ) -> None:
        super().__init__(num_classes, list(self.strides_fixed), anchors, xy_scale=2.0)
        if backbone:
            self.backbone = TorchvisionBackbone(backbone)
            channels = [make_divisible(c * width_mult) for c in widths][2:]
            self.adapt = nn.ModuleList(
                ConvBNAct(c_in, c, kernel=1)
                for c_in, c in zip(self.backbone.out_channels, channels, strict=True)
            )
        else:
            self.backbone = CSPDarknet(widths, depths, width_mult, depth_mult, block)
            channels = self.backbone.out_channels
        neck_depth = scale_depth(depths[-1], depth_mult)
        self.neck = PAN(channels, neck_depth, block)
        self._make_heads(self.neck.out_channels, obj_prior, head_width, head_branches)
