"""Image files: the one decoder of every path (:func:`decode_image`, uint8 ``[H, W, 3]`` RGB
from bytes) and a header-and-tail probe (:func:`probe_image`) that never decodes pixels."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image

from detkit.core.deploy import MAX_PIXELS

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
"""Image formats any path decodes, recognised by content (:func:`sniff_format`), never by name."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes readers look for when they list image folders (compared lower-case)."""

MIN_IMAGE_SIDE = 10
"""Images with a side shorter than this (px) carry no usable objects and are skipped."""

_TAIL_BYTES = 1024
_CV2_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION
_MAGIC = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("BMP", b"BM"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
)
# Pillow's plugin names per allowed format (a JPEG holding several pictures opens as MPO).
_PIL_FORMATS = {"JPEG": ["JPEG", "MPO"], "PNG": ["PNG"], "BMP": ["BMP"], "TIFF": ["TIFF"],
                "WEBP": ["WEBP"]}  # fmt: skip
# EXIF orientation tags that swap the two axes (transpose, rotate 90, transverse, rotate 270).
_SWAPS_AXES = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageProbe:
    """An image file's header: stored ``width``/``height`` px (before EXIF orientation; 0 when
    unusable), EXIF ``orientation`` 1..8, ``problem`` (``""`` or an issue kind) and ``detail``."""

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
    """An :class:`ImageProbe` from the header and last kilobyte; never raises for a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return ImageProbe(0, 0, problem="image_missing", detail="file not found")
    if size == 0:
        return ImageProbe(0, 0, problem="image_unreadable", detail="empty file")
    try:
        with open(path, "rb") as f:
            allowed = sniff_format(f.read(16))
        if allowed is None:
            detail = f"not an allowed image format ({', '.join(ALLOWED_FORMATS)})"
            return ImageProbe(0, 0, problem="image_unreadable", detail=detail)
        with Image.open(path, formats=_PIL_FORMATS[allowed]) as im:
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
    """The EXIF orientation tag (1 when absent); a PNG's EXIF chunk after the pixels is not
    looked for, since Pillow would decode the whole image to find it."""
    if im.format in ("JPEG", "MPO", "TIFF", "WEBP") or (im.format == "PNG" and "exif" in im.info):
        return int(im.getexif().get(0x0112, 1))
    return 1


def _complete(path: Path, fmt: str | None, size: int) -> bool:
    """True unless a JPEG lacks ``FF D9`` or a PNG ``IEND`` in its last kilobyte (cameras
    append data after the marker; ``FF D9`` cannot occur inside entropy-coded data)."""
    if (marker := {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")) is None:
        return True
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL_BYTES))
        return marker in f.read()


def sniff_format(head: bytes) -> str | None:
    """The allowed format a file's first bytes announce (never its name), or None.

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff_format(b"%!PS-Adobe-3.0")
        ('PNG', None)
    """
    for fmt, magic in _MAGIC:
        if head.startswith(magic):
            return fmt
    return "WEBP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None


def read_bytes(path: str | Path) -> bytes:
    """The whole file as bytes (``cv2.imread`` crashes on names that are not UTF-8); raises
    FileNotFoundError when ``path`` is not a file."""
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"image not found: {path}") from None


def image_header(data: bytes) -> tuple[str, int, int, int]:
    """``(format, width, height, EXIF orientation)`` from the header, no pixel decoded;
    ValueError outside :data:`ALLOWED_FORMATS` or for a header no decoder accepts."""
    if (fmt := sniff_format(data[:16])) is None:
        raise ValueError(f"not an allowed image format ({', '.join(ALLOWED_FORMATS)})")
    try:
        with warnings.catch_warnings():  # the caller applies its own pixel limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt]) as im:
                return fmt, im.width, im.height, _exif_orientation(im)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{str(e).split('.')[0]} (decompression bomb?)") from None
    except Exception as e:  # Pillow raises many types for garbage; all mean "not an image"
        raise ValueError(f"unreadable {fmt} header ({e})") from None


def decode_image(
    data: bytes, orientation: int | None = 1, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Encoded bytes -> C-contiguous uint8 ``[H, W, 3]`` RGB (:func:`to_rgb8` rules), turned by
    EXIF tag ``orientation`` (1: as stored; None: the file's own); ``max_pixels`` is checked on
    the header before any pixel is decoded. ValueError for another format, too many pixels
    or bad data."""
    fmt, width, height, tag = image_header(data)
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} px > max_pixels={max_pixels}")
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
    except cv2.error:
        array = None
    if array is None:
        array = _decode_with_pillow(data, fmt)
    elif array.ndim == 3 and array.shape[2] >= 3:
        array = cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)
    if array.shape[:2] != (height, width):
        raise ValueError(f"decoded {array.shape[1]}x{array.shape[0]}, header says {width}x{height}")
    rgb = to_rgb8(array)
    return np.ascontiguousarray(apply_orientation(rgb, tag if orientation is None else orientation))


def read_image(
    path: str | Path, orientation: int | None = 1, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """:func:`decode_image` of a file (any name): uint8 ``[H, W, 3]`` RGB; FileNotFoundError,
    or ValueError naming the file when it is not an allowed, decodable image."""
    data = read_bytes(path)
    try:
        return decode_image(data, orientation, max_pixels)
    except ValueError as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None


def _decode_with_pillow(data: bytes, fmt: str) -> np.ndarray:
    """Fallback for allowed files OpenCV cannot decode (some TIFFs): RGB or gray, any depth."""
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt]) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB"):
                return np.asarray(im)
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise ValueError(f"damaged {fmt} data ({e})") from None


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Gray/gray+alpha/RGB/RGBA ``[H, W(, C)]`` -> uint8 ``[H, W, 3]`` RGB; uint16 and int32
    (Pillow's 16-bit) are scaled by 255/65535, floats read as ``[0, 1]``; alpha is dropped.

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
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array[..., :3]


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """``[H, W, ...]`` (not modified) as a viewer shows it under EXIF tag 1..8; 5..8 swap H, W.

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


@contextlib.contextmanager
def decoder_messages(into: IO[bytes] | None = None, echo: bool = False) -> Iterator[list[str]]:
    """Point fd 2 (where libjpeg and co. print) at ``into`` (a reused binary file, emptied past
    1 MiB; None: a temporary one) during the block; the yielded list then holds what was
    written, as one stripped string. ``echo`` passes it on to the real fd 2."""
    caught: list[str] = []
    sys.stderr.flush()
    f = tempfile.TemporaryFile() if into is None else into  # noqa: SIM115 (closed below)
    if f.seek(0, os.SEEK_END) > 1 << 20:
        f.truncate(0)
        f.seek(0)
    start, saved = f.tell(), os.dup(2)
    os.dup2(f.fileno(), 2)
    try:
        yield caught
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        f.seek(start)
        text = f.read().decode("utf-8", "replace").strip()
        if into is None:
            f.close()
        if text:
            caught.append(text)
            if echo:
                os.write(2, (text + "\n").encode())
