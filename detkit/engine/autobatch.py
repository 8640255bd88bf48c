"""``batch=-1``: the largest batch whose fitted peak CUDA memory (a line through forward +
backward of a model copy at :data:`PROBE_SIZES`) fits :data:`FRACTION` of the free memory, less
optimiser state and EMA; :data:`CPU_BATCH` on a CPU, where memory is rarely the limit."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

CPU_BATCH = 16
FRACTION = 0.6  # share of the free CUDA memory the chosen batch may fill
PROBE_SIZES = (1, 2, 4, 8)
MAX_BATCH = 512


def auto_batch(
    model: nn.Module, img_size: int, device: torch.device, amp: torch.dtype | None = None,
    say: Callable[[str], object] = log.info,
) -> int:  # fmt: skip
    """Images per device for one training step of ``model`` (not modified) at the square
    ``img_size`` px under autocast ``amp`` (None: float32): in ``[1, MAX_BATCH]``, a multiple
    of 8 from 16 up; ``say`` gets the one-line choice."""
    if device.type != "cuda":
        say(f"batch=-1: {CPU_BATCH} (a fixed batch on {device.type}; automatic sizing needs CUDA)")
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    # the peaks count what is allocated already, the copy measured (as big as the EMA) and the
    # gradients; training adds the optimiser's two moments
    budget = torch.cuda.memory_allocated(device) + FRACTION * free - 2 * params
    sizes, peaks = _profile(model, img_size, device, amp)
    if len(sizes) < 2:
        say("batch=-1: 1 (not even 2 images fit in the free CUDA memory)")
        return 1
    per_image, fixed = _fit(sizes, peaks)
    batch = int((budget - fixed) / per_image) if per_image > 0 else MAX_BATCH
    batch = max(1, min(MAX_BATCH, batch))
    batch = batch - batch % 8 if batch >= 16 else batch
    say(
        f"batch=-1: {batch} (peak {fixed / 2**20:.0f} MiB + {per_image / 2**20:.1f} MiB per image "
        f"at {img_size} px; {FRACTION:.0%} of {free / 2**30:.1f} GiB free on {device})"
    )
    return batch


def _profile(
    model: nn.Module, img_size: int, device: torch.device, amp: torch.dtype | None
) -> tuple[list[int], list[int]]:
    """Peak CUDA bytes of forward + backward of a model copy at :data:`PROBE_SIZES` that fit."""
    probe = copy.deepcopy(model).to(device).train()
    sizes, peaks = [], []
    for n in PROBE_SIZES:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.rand(n, 3, img_size, img_size, device=device)
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                out = probe(x)
            out.float().sum().backward()
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            probe.zero_grad(set_to_none=True)
        sizes.append(n)
        peaks.append(torch.cuda.max_memory_allocated(device))
    del probe
    torch.cuda.empty_cache()
    return sizes, peaks


def _fit(sizes: list[int], peaks: list[int]) -> tuple[float, float]:
    """Least-squares line ``peak = fixed + per_image * n``: ``(per_image, fixed)`` bytes.

    Example:
        >>> _fit([1, 2, 4], [110, 120, 140])
        (10.0, 100.0)
    """
    n = len(sizes)
    mx, my = sum(sizes) / n, sum(peaks) / n
    var = sum((x - mx) ** 2 for x in sizes)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, peaks, strict=True)) / var
    return slope, my - slope * mx
