"""Records that cross modules: ``Sample`` (what readers return) and ``LetterboxInfo`` (orig px
<-> input px)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

BoxesT = TypeVar("BoxesT", np.ndarray, torch.Tensor)
# an image as a caller gives it: a file path, an ``H x W x 3`` uint8 array (BGR unless the call
# says ``rgb``) or a PIL image
ImageLike: TypeAlias = "str | Path | np.ndarray | Image.Image"


@dataclass
class Sample:
    """One decoded image with its ground truth, as a reader returns it: ``image`` uint8
    ``[H, W, 3]`` RGB, ``boxes`` float32 ``[N, 4]`` xyxy orig px (``0 <= x1 < x2 <= W``),
    ``labels`` int64 ``[N]`` in ``0..C-1``, the dataset's ``image_id`` and the file's ``path``."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    path: str


@dataclass(frozen=True)
class LetterboxInfo:
    """The affine map from orig px to input px: ``x_in = x_orig * scale_x + pad_x``
    (``scale_x = new_w / orig_w``; pads left/top, input px, 0 for detkit's letterbox).

    Example:
        >>> info = LetterboxInfo(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=0.0, orig_h=200, orig_w=100)
        >>> info.to_input(np.array([[10.0, 20.0, 30.0, 40.0]], dtype=np.float32))
        array([[ 5., 10., 15., 20.]], dtype=float32)
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    orig_h: int
    orig_w: int

    def to_input(self, boxes: BoxesT) -> BoxesT:
        """``[..., 4]`` xyxy orig px (numpy or torch, not modified) -> input px, same type and
        device; integers come back float32."""
        scale = (self.scale_x, self.scale_y, self.scale_x, self.scale_y)
        pad = (self.pad_x, self.pad_y, self.pad_x, self.pad_y)
        boxes = _as_float(boxes)
        return boxes * _like(scale, boxes) + _like(pad, boxes)

    def to_orig(self, boxes: BoxesT) -> BoxesT:
        """``[..., 4]`` xyxy input px (numpy or torch, not modified) -> orig px clipped to
        ``[0, orig_w] x [0, orig_h]``, same type and device; integers come back float32."""
        scale = (self.scale_x, self.scale_y, self.scale_x, self.scale_y)
        pad = (self.pad_x, self.pad_y, self.pad_x, self.pad_y)
        bound = (self.orig_w, self.orig_h, self.orig_w, self.orig_h)
        boxes = _as_float(boxes)
        out = (boxes - _like(pad, boxes)) / _like(scale, boxes)
        if isinstance(out, torch.Tensor):
            return torch.minimum(out.clamp(min=0), _like(bound, out))
        return np.clip(out, 0, _like(bound, out))


def to_orig_batch(infos: list[LetterboxInfo], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
    """:meth:`LetterboxInfo.to_orig` of each image's float ``[K_i, 4]`` xyxy input px (one
    device) in one tensor operation, equal to the per-image results: ``[K_i, 4]`` orig px.

    Example:
        >>> a = LetterboxInfo(0.5, 0.5, 0.0, 0.0, orig_h=200, orig_w=100)
        >>> b = LetterboxInfo(2.0, 2.0, 0.0, 0.0, orig_h=10, orig_w=10)
        >>> to_orig_batch([a, b], [torch.tensor([[5.0, 10.0, 60.0, 200.0]]), torch.zeros(0, 4)])
        [tensor([[ 10.,  20., 100., 200.]]), tensor([], size=(0, 4))]
    """
    if not boxes:
        return []
    flat = torch.cat(boxes)
    table = torch.tensor(
        [(i.pad_x, i.pad_y, i.scale_x, i.scale_y, i.orig_w, i.orig_h) for i in infos],
        dtype=flat.dtype,
    ).to(flat.device, non_blocking=True)
    rows = table.repeat_interleave(torch.tensor([len(b) for b in boxes]).to(flat.device), dim=0)
    pad, scale, bound = (rows[:, k : k + 2].repeat(1, 2) for k in (0, 2, 4))
    out = torch.minimum(((flat - pad) / scale).clamp(min=0), bound)
    return list(out.split([len(b) for b in boxes]))


def _as_float(boxes: BoxesT) -> BoxesT:
    """Return ``boxes`` itself when floating point, else a float32 copy."""
    if isinstance(boxes, torch.Tensor):
        return boxes if boxes.is_floating_point() else boxes.float()
    boxes = np.asarray(boxes)
    return boxes if np.issubdtype(boxes.dtype, np.floating) else boxes.astype(np.float32)


def _like(values: tuple[float, ...], ref: BoxesT) -> BoxesT:
    """Build a 1-D array or tensor from ``values`` with ``ref``'s type, dtype and device."""
    if isinstance(ref, torch.Tensor):
        return torch.tensor(values, dtype=ref.dtype, device=ref.device)
    return np.asarray(values, dtype=ref.dtype)
