"""Building blocks of the detectors: conv-BN-activation, residual, CSP (C3), SPPF, MobileNetV2."""

from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BN -> SiLU, same padding: ``[B, c_out, ceil(H / s), ceil(W / s)]``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWSeparable(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1 ``ConvBNAct``: ``9 / c_out + 1 / 9`` of a 3x3's MACs."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(ConvBNAct(c_in, c_in, 3, groups=c_in), ConvBNAct(c_in, c_out, 1))


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


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to the nearest multiple of ``divisor`` (never below it).

    Example:
        >>> make_divisible(64 * 0.33), make_divisible(1024 * 0.25), make_divisible(3)
        (24, 256, 8)
    """
    return max(divisor, int(channels / divisor + 0.5) * divisor)


class Bottleneck(nn.Module):
    """A ``first``x``first`` conv then a 3x3 conv, added back to the input when ``shortcut``."""

    def __init__(
        self, channels: int, shortcut: bool = True, expansion: float = 1.0, first: int = 1
    ) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.cv1 = ConvBNAct(channels, hidden, kernel=first)
        self.cv2 = ConvBNAct(hidden, channels, kernel=3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """YOLOv5's C3: half the channels through ``n`` bottlenecks, half skipping, 1x1 fuse."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1 = ConvBNAct(c_in, hidden, kernel=1)
        self.cv2 = ConvBNAct(c_in, hidden, kernel=1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(n)))
        self.cv3 = ConvBNAct(2 * hidden, c_out, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C2f(nn.Module):
    """YOLOv8's C2f: a 1x1 conv makes two halves; ``n`` (3x3, 3x3) bottlenecks chain on the second;
    both halves and every bottleneck's output feed a 1x1 fuse."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1 = ConvBNAct(c_in, 2 * hidden, kernel=1)
        self.m = nn.ModuleList(Bottleneck(hidden, shortcut, first=3) for _ in range(n))
        self.cv2 = ConvBNAct((2 + n) * hidden, c_out, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


CSP_BLOCKS = {"c3": C3, "c2f": C2f}


class SPPF(nn.Module):
    """SPP, fast: three chained 5x5 max-pools concatenated with their input, then a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, kernel=1)
        self.pool = nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)
        self.cv2 = ConvBNAct(hidden * 4, c_out, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), dim=1))


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BN -> ReLU6, as in MobileNetV2; shapes as :class:`ConvBNAct`."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project, residual if shape kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = [ConvBNReLU6(c_in, hidden, 1)] if expand != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)
