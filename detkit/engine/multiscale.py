"""Multi-scale training: a random input size per batch, a pure function of ``(seed, epoch,
batch)`` so that a resumed run and every DDP rank pick the same size for the same batch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def multiscale_size(
    seed: int, epoch: int, batch: int, img_size: int, ratio: float, stride: int = 32
) -> int:
    """The square input size of one batch: uniform over multiples of ``stride`` in
    ``[img_size * (1 - ratio), img_size * (1 + ratio)]`` (at least one stride); ``ratio`` 0:
    ``img_size``.

    Example:
        >>> sizes = {multiscale_size(0, 0, b, 320, 0.5) for b in range(200)}
        >>> min(sizes), max(sizes), all(s % 32 == 0 for s in sizes)
        (160, 480, True)
        >>> multiscale_size(0, 0, 0, 320, 0.0)
        320
    """
    if ratio <= 0:
        return img_size
    low = max(int(img_size * (1 - ratio)) // stride, 1)
    high = max(int(img_size * (1 + ratio)) // stride, low)
    rng = np.random.default_rng([seed, epoch, batch, 0x5CA1E])
    return int(rng.integers(low, high + 1)) * stride


def resize_batch(
    images: torch.Tensor, targets: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``[B, 3, S, S]`` images and ``[M, 6]`` targets ``(batch_index, label, x1, y1, x2,
    y2)`` (xyxy input px) resized to ``size x size``: ``(images [B, 3, size, size], targets)``
    in px of the new input (arguments not modified)."""
    current = images.shape[-1]
    if size == current:
        return images, targets
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    scale = torch.ones(6, dtype=targets.dtype, device=targets.device)
    scale[2:] = size / current
    return images, targets * scale
