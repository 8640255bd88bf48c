"""Building blocks shared by the detectors: conv-BN-activation and a residual pair."""

from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU. Padding keeps H x W when stride is 1.

    Shapes: ``[B, c_in, H, W] -> [B, c_out, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Two convs (1x1 then 3x3) added back to the input; shapes unchanged ``[B, c, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 2, 8)
        self.body = nn.Sequential(
            ConvBNAct(channels, hidden, kernel=1), ConvBNAct(hidden, channels, kernel=3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
