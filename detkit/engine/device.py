"""Device selection and the CUDA-only speed paths (AMP, cuDNN autotuning), guarded for CPUs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


def select_device(spec: str = "") -> torch.device:
    """``""`` picks CUDA when present, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as named;
    a bare index ``"0"`` (Ultralytics' ``device=0``) means ``"cuda:0"``.

    Raises:
        ValueError: an unknown device name, or CUDA was asked for but is not available.
    """
    if not spec:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = str(spec).strip()
    if "," in spec:
        raise ValueError(
            f"device={spec}: one device per process; for several GPUs run "
            "torchrun --nproc_per_node N tools/train.py ..."
        )
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(
            f"device {spec!r} is not a device; use cpu, cuda, cuda:N or N (a GPU index)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available; use device=cpu")
    return device


AMP_DTYPES = ("auto", "bf16", "fp16")


def amp_dtype(device: torch.device, enabled: bool, choice: str = "auto") -> torch.dtype | None:
    """The autocast dtype on ``device``; None on CPU or when off. ``choice="auto"``: bf16 where
    native, else fp16 (with a GradScaler); ``"bf16"`` / ``"fp16"`` as named.

    Raises:
        ValueError: an unknown ``choice``.
    """
    if choice not in AMP_DTYPES:
        raise ValueError(
            f"train.amp_dtype={choice!r} unknown; choose one of {', '.join(AMP_DTYPES)}"
        )
    if not enabled or device.type != "cuda":
        return None
    if choice == "fp16":
        return torch.float16
    # bf16 in hardware from compute capability 8.0; torch.cuda.is_bf16_supported() also says
    # yes where bf16 is emulated, and asks the current GPU
    native = torch.cuda.get_device_capability(device) >= (8, 0)
    if choice == "bf16" and not native:
        log.warning("amp_dtype=bf16 on %s, whose bf16 is emulated (compute capability < 8.0): "
                    "slow, and some kernels may be missing; amp_dtype=fp16 is native", device)  # fmt: skip
    return torch.bfloat16 if native or choice == "bf16" else torch.float16


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN autotuning (worth it for a fixed input size) while the context lasts."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
