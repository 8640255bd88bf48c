"""Device selection and the CUDA-only speed paths (AMP, pinned memory), guarded for CPUs."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def select_device(spec: str = "") -> torch.device:
    """``""`` picks CUDA when present, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as named.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if not spec:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available; use device=cpu")
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU supports it, else fp16; None on CPU or when off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast on CUDA with ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
