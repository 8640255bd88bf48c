"""numpy <-> torch, half precision and shape checks (one wording) of every public box function."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])

_HALF = (torch.float16, torch.bfloat16)


class _Conversion:
    """Remembers how the inputs of one call arrived so the outputs can leave the same way."""

    def __init__(self) -> None:
        self.numpy, self.seen_array, self.half = False, False, None  # half: the input's dtype

    def to_torch(self, x: object) -> object:
        if isinstance(x, np.ndarray):
            self.numpy |= not self.seen_array  # the first array argument decides the outputs
            # from_numpy shares memory; negative strides and read-only buffers need a copy first.
            if not x.flags.writeable or any(s < 0 for s in x.strides):
                x = x.copy()
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            return x
        self.seen_array = True
        if x.dtype in _HALF:
            self.half = self.half or x.dtype
            # Areas and products overflow float16 past 65504, so half inputs are computed in fp32.
            return x.float()
        return x

    def restore(self, out: object, keep_float32: bool) -> object:
        if isinstance(out, tuple | list):
            return type(out)(self.restore(o, keep_float32) for o in out)
        if not isinstance(out, Tensor):
            return out
        if self.half is not None and not keep_float32 and out.is_floating_point():
            out = out.to(self.half)
        return out.detach().cpu().numpy() if self.numpy else out


def array_api(fn: F | None = None, *, keep_float32: bool = False) -> F | Callable[[F], F]:
    """Let a box function take numpy arrays (shared memory; outputs, also in tuples and lists,
    go back to numpy when the first array argument was numpy) or torch tensors; float16/bfloat16
    run in float32 and floating outputs are cast back unless ``keep_float32`` (areas)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            conv = _Conversion()
            args = tuple(conv.to_torch(a) for a in args)
            kwargs = {k: conv.to_torch(v) for k, v in kwargs.items()}
            return conv.restore(func(*args, **kwargs), keep_float32)

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def check_boxes(boxes: Tensor, name: str = "boxes", batched: bool = False) -> Tensor:
    """Check that ``boxes`` is ``[N, 4]`` (``[..., 4]`` when ``batched``); return it, or a float32
    copy of an integer tensor. Raises ``ValueError`` stating the expected shape."""
    if not isinstance(boxes, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(boxes).__name__}"
        )
    ndim_ok = boxes.dim() >= 1 if batched else boxes.dim() == 2
    if not ndim_ok or boxes.shape[-1] != 4:
        expected = "[..., 4]" if batched else "[N, 4]"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(boxes.shape)}")
    return boxes if boxes.is_floating_point() else boxes.float()


def check_shape(x: Tensor, shape: Sequence[int], name: str, spec: str) -> Tensor:
    """Return ``x`` if its shape is exactly ``shape``, else raise ``ValueError`` quoting ``spec``
    (the shape in words, e.g. ``"[N]"``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {spec} = {tuple(shape)}, got {tuple(x.shape)}")
    return x
