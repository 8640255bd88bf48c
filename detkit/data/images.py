"""Image files: a cheap header probe at open time, and one decoder to 3-channel 8-bit RGB.

The probe (:func:`probe_image`) reads the header and the last kilobyte of a file, never the pixel
data, so checking a large dataset when it is opened stays fast. It finds what a decoder would
get wrong silently: a missing, empty or non-image file, a JPEG or PNG cut short (OpenCV decodes
those into grey garbage with only a warning), a decompression bomb, and the EXIF orientation.

:func:`read_image` decodes any of grayscale, palette, RGB(A), CMYK and 16-bit files to uint8
``[H, W, 3]`` RGB: alpha dropped, 16 bits scaled by 255/65535 (never clipped), EXIF orientation
applied only when asked (a reader decides, see :func:`orientation_frame`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes readers look for when they list image folders (compared lower-case)."""

MAX_PIXELS = 89_478_485
"""Default decompression-bomb limit (width x height), Pillow's own warning threshold."""

MIN_IMAGE_SIDE = 10
"""Images with a side shorter than this (px) carry no usable objects and are skipped."""

_TAIL_BYTES = 1024
_CV2_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION
# EXIF orientation tags that swap the two axes (transpose, rotate 90, transverse, rotate 270).
_SWAPS_AXES = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageProbe:
    """What the header of an image file says, or why it cannot be used.

    Attributes:
        width: stored width in px (before EXIF orientation); 0 when unreadable.
        height: stored height in px (before EXIF orientation); 0 when unreadable.
        orientation: EXIF orientation tag, 1..8 (1: none).
        problem: ``""`` when usable, else an issue kind of :mod:`detkit.data.check`
            (``"image_missing"``, ``"image_unreadable"``, ``"image_truncated"``).
        detail: a human-readable reason for ``problem``.
    """

    width: int
    height: int
    orientation: int = 1
    problem: str = ""
    detail: str = ""

    def shown_size(self) -> tuple[int, int]:
        """``(height, width)`` as a viewer shows the image (EXIF orientation applied)."""
        if self.orientation in _SWAPS_AXES:
            return self.width, self.height
        return self.height, self.width


def probe_image(path: str | Path) -> ImageProbe:
    """Read an image file's header and tail without decoding its pixels.

    Args:
        path: the image file.

    Returns:
        An :class:`ImageProbe`; ``problem`` is set (and the size 0) for a missing, empty,
        unidentifiable or truncated file. Never raises for a bad file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return ImageProbe(0, 0, problem="image_missing", detail="file not found")
    if size == 0:
        return ImageProbe(0, 0, problem="image_unreadable", detail="empty file")
    try:
        with Image.open(path) as im:
            width, height, fmt = im.width, im.height, im.format
            orientation = _exif_orientation(im)
    except Image.DecompressionBombError as e:  # Pillow refuses > 2 * its own limit outright
        return ImageProbe(0, 0, problem="image_too_large", detail=str(e).split(".")[0])
    except Exception as e:  # PIL raises many types for garbage; all mean "not an image"
        return ImageProbe(0, 0, problem="image_unreadable", detail=f"not an image ({e})")
    if not _complete(path, fmt, size):
        return ImageProbe(0, 0, problem="image_truncated", detail=f"{fmt} file ends early")
    return ImageProbe(width, height, orientation if 1 <= orientation <= 8 else 1)


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag from the header only (1 when absent).

    Pillow decodes a whole PNG to look for an EXIF chunk after the pixel data; only a chunk
    before it (where writers put it) is read here, so probing never decodes pixels.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    if im.format not in ("JPEG", "MPO", "TIFF", "WEBP", "PNG"):
        return 1
    return int(im.getexif().get(0x0112, 1))


def _complete(path: Path, fmt: str | None, size: int) -> bool:
    """True unless a JPEG lacks its end-of-image marker or a PNG its IEND chunk.

    The marker is searched in the last kilobyte, not just the last two bytes, because cameras and
    editors append data after it. ``FF D9`` cannot occur inside JPEG entropy-coded data (an ``FF``
    there is always followed by ``00`` or a restart marker), so finding it means the scan ended.
    """
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
    if marker is None:
        return True
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        return marker in f.read()


def orientation_frame(probe: ImageProbe, declared: tuple[int, int] | None) -> int:
    """The EXIF orientation to apply so that pixels match what the labeller saw.

    A labelling tool shows a photo rotated by its EXIF tag, as every viewer does, so boxes are
    drawn on the rotated picture; an annotation file that records the stored (unrotated) size
    instead says that the tool ignored the tag, and then the boxes are in the stored frame.

    Args:
        probe: the file's header.
        declared: ``(height, width)`` recorded in the annotation file, or None (YOLO records none).

    Returns:
        The orientation tag to apply in :func:`read_image`: ``probe.orientation``, or 1 when the
        declared size matches the stored pixels but not the rotated ones.
    """
    if probe.orientation in _SWAPS_AXES and declared is not None:
        stored = (probe.height, probe.width)
        if tuple(declared) == stored and stored != probe.shown_size():
            return 1
    return probe.orientation


def read_image(path: str | Path, orientation: int = 1) -> np.ndarray:
    """Decode an image file to 3-channel 8-bit RGB.

    Grayscale and palette images are expanded to RGB, alpha is dropped, 16-bit images are scaled
    to 8 bits (``v * 255 / 65535``, rounded) rather than clipped. The EXIF tag in the file is
    ignored; ``orientation`` says which orientation to apply (readers pass what
    :func:`orientation_frame` chose).

    Args:
        path: image file.
        orientation: EXIF orientation tag 1..8 to apply (1: pixels as stored).

    Returns:
        ``uint8`` array ``[H, W, 3]``, RGB, C-contiguous.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` exists but cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    array = cv2.imread(os.fspath(path), _CV2_FLAGS)
    array = _read_with_pillow(path) if array is None else _bgr_to_rgb(array)
    rgb = to_rgb8(array)
    return np.ascontiguousarray(apply_orientation(rgb, orientation))


def _bgr_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] >= 3:
        return cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)
    return array


def _read_with_pillow(path: Path) -> np.ndarray:
    """Fallback for files OpenCV cannot decode (GIF, some TIFFs): RGB or gray, any depth."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB"):
                return np.asarray(im)
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise ValueError(f"cannot decode image: {path} ({e})") from None


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Convert a decoded ``[H, W]`` or ``[H, W, C]`` array (RGB channel order) to uint8 RGB.

    Args:
        array: gray ``[H, W]`` / ``[H, W, 1]``, gray+alpha ``[H, W, 2]``, RGB ``[H, W, 3]`` or
            RGBA ``[H, W, 4]``; uint8, uint16 (scaled by 255/65535), int32 (16-bit data, as
            Pillow stores it) or float in ``[0, 1]``.

    Returns:
        ``uint8`` ``[H, W, 3]`` RGB (a new array unless ``array`` already is one).

    Example:
        >>> to_rgb8(np.array([[0, 65535, 32896]], dtype=np.uint16))[0, :, 0].tolist()
        [0, 255, 128]
    """
    if array.dtype == np.uint16 or (array.dtype.kind == "i" and array.dtype.itemsize > 1):
        array = np.rint(np.clip(array, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
    elif array.dtype.kind == "f":
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    return array[..., :3]


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip ``[H, W, C]`` pixels as EXIF orientation ``orientation`` prescribes.

    Args:
        image: ``[H, W, ...]`` array, not modified.
        orientation: EXIF tag 1..8 (1 returns ``image`` itself).

    Returns:
        The image as a viewer shows it; tags 5..8 swap ``H`` and ``W``.

    Example:
        >>> apply_orientation(np.arange(6).reshape(2, 3), 6).tolist()  # rotate 90 clockwise
        [[3, 0], [4, 1], [5, 2]]
    """
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    if orientation not in ops:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return ops[orientation](image)
