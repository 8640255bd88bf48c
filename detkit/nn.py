"""Layer arithmetic by hand: how big a conv's output is and how many parameters it holds.

These are the two formulas behind every row of :func:`detkit.summary`; they take plain integers
so they can be checked on paper.
"""

from __future__ import annotations

import math


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_output_size(
    size: int | tuple[int, int],
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> int | tuple[int, int]:
    """Spatial output size of a convolution or pooling window.

    ``out = floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1`` per axis
    (``ceil`` instead of ``floor`` with ``ceil_mode``, as ``nn.MaxPool2d(ceil_mode=True)``).

    Args:
        size: input side ``W`` (or ``(H, W)``), in cells.
        kernel, stride, padding, dilation: as ``nn.Conv2d``'s arguments (int or a pair).
        ceil_mode: round up instead of down.

    Returns:
        The output side (a pair when any argument is a pair).

    Raises:
        ValueError: the window does not fit (the output would be empty).

    Example:
        >>> conv_output_size(32, kernel=5, stride=1, padding=2)
        32
        >>> conv_output_size((300, 256), kernel=3, stride=2, padding=1)
        (150, 128)
    """
    args = (size, kernel, stride, padding, dilation)
    pairs = any(not isinstance(a, int) for a in args)
    rnd = math.ceil if ceil_mode else math.floor
    out = []
    for s, k, st, p, d in zip(*(_pair(a) for a in args), strict=True):
        n = rnd((s + 2 * p - d * (k - 1) - 1) / st) + 1
        if n < 1:
            raise ValueError(f"a {k}x{k} window (dilation {d}, padding {p}) does not fit in {s}")
        out.append(n)
    return tuple(out) if pairs else out[0]


def conv_params(
    in_ch: int, out_ch: int, kernel: int | tuple[int, int], bias: bool = True, groups: int = 1
) -> int:
    """Number of learnable parameters of a 2-D convolution.

    Each of the ``out_ch`` filters spans ``in_ch / groups`` channels and ``kh x kw`` positions,
    plus one bias each: ``out_ch * (in_ch / groups * kh * kw + bias)``.

    Example:
        >>> conv_params(3, 10, 5)  # ten 5x5 filters on an RGB input
        760
        >>> conv_params(64, 32, 1, bias=False)
        2048
    """
    if in_ch % groups or out_ch % groups:
        raise ValueError(f"channels ({in_ch}, {out_ch}) must be divisible by groups={groups}")
    kh, kw = _pair(kernel)
    return out_ch * (in_ch // groups * kh * kw + int(bias))
