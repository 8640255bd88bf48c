"""Multi-scale training: a random input size per batch, drawn from ``(seed, epoch, batch)`` alone.

The size is a pure function of the run's seed and the batch's position, never of a global random
state, so a resumed run (and every DDP rank) picks the same size for the same batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def multiscale_size(
    seed: int, epoch: int, batch: int, img_size: int, ratio: float, stride: int = 32
) -> int:
    """The square input size of one batch: uniform over multiples of ``stride`` in
    ``[img_size * (1 - ratio), img_size * (1 + ratio)]`` (at least one stride).

    ``ratio`` 0 returns ``img_size`` unchanged.

    Example:
        >>> multiscale_size(0, 3, 7, 320, 0.5) == multiscale_size(0, 3, 7, 320, 0.5)
        True
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
    """Resize a letterboxed batch to ``size x size`` and scale its boxes to match.

    Args:
        images: float ``[B, 3, S, S]`` in [0, 1]; not modified.
        targets: ``[M, 6]`` rows ``(batch_index, label, x1, y1, x2, y2)``, boxes xyxy input px
            of the ``S x S`` input; not modified.
        size: the new side in px.

    Returns:
        ``(images [B, 3, size, size], targets)`` with boxes xyxy in px of the new input.
    """
    current = images.shape[-1]
    if size == current:
        return images, targets
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    scale = torch.ones(6, dtype=targets.dtype, device=targets.device)
    scale[2:] = size / current
    return images, targets * scale
