"""Necks: mix the backbone's maps across scales before the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detkit.models.blocks import CSP_BLOCKS, ConvBNAct


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
