"""Image files: one decoder for every path, and a cheap header probe at open time.

:func:`decode_image` (and :func:`read_image`, its file form) is the only decoder: training,
evaluation, the full check at scan time (:mod:`detkit.data.scan`), ``detkit infer`` and
``Detector.predict`` all call it. Bytes in (so any file name works); the format is recognised
from the content and must be one of :data:`ALLOWED_FORMATS`; the header's size is checked
against ``max_pixels`` before a pixel is decoded; grayscale, palette, RGB(A), CMYK and 16-bit
files come out as uint8 ``[H, W, 3]`` RGB: alpha dropped, 16 bits scaled by 255/65535 (never
clipped); EXIF orientation is applied as the caller says (a reader decides, see
:func:`orientation_frame`; inference applies the file's tag, as viewers do).

The probe (:func:`probe_image`) reads the header and the last kilobyte of a file, never the pixel
data: a missing, empty or non-image file, a JPEG or PNG cut short, a decompression bomb, and the
EXIF orientation.
"""

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


def sniff_format(head: bytes) -> str | None:
    """The allowed format a file's first bytes announce, or None (see :data:`ALLOWED_FORMATS`).

    The content decides, never the file name: a PostScript or SVG file named ``.jpg`` is not
    handed to any decoder.

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff_format(b"%!PS-Adobe-3.0")
        ('PNG', None)
    """
    for fmt, magic in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_bytes(path: str | Path) -> bytes:
    """The whole file. Bytes, not a decoder's own file access, so that any file name works
    (OpenCV's ``imread`` crashes on a name that is not valid UTF-8).

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"image not found: {path}") from None


def image_header(data: bytes) -> tuple[str, int, int, int]:
    """``(format, width, height, EXIF orientation)`` from the header, no pixel decoded.

    Raises:
        ValueError: not one of :data:`ALLOWED_FORMATS`, or a header no decoder accepts.
    """
    fmt = sniff_format(data[:16])
    if fmt is None:
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
    """Decode an encoded image to 3-channel 8-bit RGB: the one decoder of every path.

    The format comes from the content and must be one of :data:`ALLOWED_FORMATS`; the header's
    size is checked against ``max_pixels`` before any pixel is decoded. Grayscale and palette
    images are expanded to RGB, alpha is dropped, 16-bit images are scaled by the maximum of
    their type (``v * 255 / 65535``, rounded; :func:`to_rgb8`).

    Args:
        data: the file's bytes.
        orientation: EXIF orientation tag 1..8 to apply (1: pixels as stored; readers pass what
            :func:`orientation_frame` chose), or None for the file's own tag (as viewers show it).
        max_pixels: refuse images with more pixels (width x height) than this.

    Returns:
        ``uint8`` array ``[H, W, 3]``, RGB, C-contiguous.

    Raises:
        ValueError: a format outside the allowlist, too many pixels, or undecodable data.
    """
    fmt, width, height, tag = image_header(data)
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} px > max_pixels={max_pixels}")
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
    except cv2.error:
        array = None
    array = _decode_with_pillow(data, fmt) if array is None else _bgr_to_rgb(array)
    if array.shape[:2] != (height, width):
        raise ValueError(f"decoded {array.shape[1]}x{array.shape[0]}, header says {width}x{height}")
    rgb = to_rgb8(array)
    return np.ascontiguousarray(apply_orientation(rgb, tag if orientation is None else orientation))


def read_image(
    path: str | Path, orientation: int | None = 1, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Read and decode an image file with :func:`decode_image` (see there for the policy).

    Args:
        path: image file (any name, valid UTF-8 or not).
        orientation: EXIF orientation tag 1..8 to apply, or None for the file's own tag.
        max_pixels: refuse images with more pixels (width x height) than this.

    Returns:
        ``uint8`` array ``[H, W, 3]``, RGB, C-contiguous.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` exists but is not an allowed, decodable image (the message names it).
    """
    data = read_bytes(path)
    try:
        return decode_image(data, orientation, max_pixels)
    except ValueError as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None


def _bgr_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] >= 3:
        return cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)
    return array


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


@contextlib.contextmanager
def decoder_messages(into: IO[bytes] | None = None, echo: bool = False) -> Iterator[list[str]]:
    """Point file descriptor 2 (where C decoders such as libjpeg print "Corrupt JPEG data") at
    ``into`` while the block runs; the yielded list then holds what was written there, as one
    stripped string, or nothing.

    Args:
        into: a binary file reused across calls (a worker's; cut back to empty past 1 MiB), or
            None for a temporary file of the block's own.
        echo: also pass what was caught on to the real fd 2.
    """
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
