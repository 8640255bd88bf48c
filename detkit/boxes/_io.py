"""Input/output handling shared by every box function: numpy <-> torch, half precision, shapes.

Each public box function is wrapped once with :func:`array_api` instead of repeating the same
conversions in its body, and checks its arguments with :func:`check_boxes` / :func:`check_shape`
so that every shape error reads the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])

_HALF = (torch.float16, torch.bfloat16)


class _Conversion:
    """Remembers how the inputs of one call arrived so the outputs can leave the same way."""

    def __init__(self) -> None:
        self.numpy = False
        self.seen_array = False
        self.half: torch.dtype | None = None

    def to_torch(self, x: object) -> object:
        if isinstance(x, np.ndarray):
            if not self.seen_array:
                self.numpy = True
            # from_numpy shares memory; negative strides and read-only buffers need a copy first.
            if not x.flags.writeable or any(s < 0 for s in x.strides):
                x = x.copy()
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            return x
        self.seen_array = True
        if x.dtype in _HALF:
            if self.half is None:
                self.half = x.dtype
            # Areas and products overflow float16 past 65504, so half inputs are computed in fp32.
            return x.float()
        return x

    def restore(self, out: object, keep_float32: bool) -> object:
        if isinstance(out, tuple):
            return tuple(self.restore(o, keep_float32) for o in out)
        if isinstance(out, list):
            return [self.restore(o, keep_float32) for o in out]
        if not isinstance(out, Tensor):
            return out
        if self.half is not None and not keep_float32 and out.is_floating_point():
            out = out.to(self.half)
        if self.numpy:
            return out.detach().cpu().numpy()
        return out


@overload
def array_api(fn: F, *, keep_float32: bool = False) -> F: ...


@overload
def array_api(fn: None = None, *, keep_float32: bool = False) -> Callable[[F], F]: ...


def array_api(fn: F | None = None, *, keep_float32: bool = False) -> F | Callable[[F], F]:
    """Let a box function take numpy arrays or torch tensors of any floating dtype.

    numpy arguments become tensors (sharing memory; functions never write into them) and, when
    the first array argument was a numpy array, tensor outputs go back to numpy. float16 and
    bfloat16 tensors are upcast to float32 for the computation and floating outputs are cast back
    to that half dtype, unless ``keep_float32`` (used where the result does not fit in half
    precision, such as areas). Tuples and lists of outputs are converted element by element.

    Args:
        fn: the function to wrap; when omitted, returns a decorator (``@array_api(...)``).
        keep_float32: return floating outputs of half-precision inputs as float32.

    Returns:
        The wrapped function, or a decorator when ``fn`` is None.
    """

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
    """Check that ``boxes`` is ``[N, 4]`` (or ``[..., 4]`` when ``batched``) and make it floating.

    Args:
        boxes: the tensor to check.
        name: argument name used in the error message.
        batched: accept any number of leading dimensions.

    Returns:
        ``boxes`` itself, or a float32 copy when it had an integer dtype.

    Raises:
        ValueError: when the shape is wrong; the message states the expected shape.
    """
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
    """Check that ``x`` has exactly ``shape``.

    Args:
        x: the tensor to check.
        shape: the expected shape.
        name: argument name used in the error message.
        spec: the expected shape in words, e.g. ``"[N]"``.

    Returns:
        ``x`` unchanged.

    Raises:
        ValueError: when the shape differs; the message states the expected shape.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {spec} = {tuple(shape)}, got {tuple(x.shape)}")
    return x
