"""Inference inputs (images, folders, globs, ``.txt`` lists, videos) read into ``H x W x 3`` uint8
RGB through the training decoder, so users get what evaluation measured. A bad input becomes an
:class:`Item` with its ``error``; the stream goes on."""

from __future__ import annotations

import glob
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from detkit.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    decoder_messages,
    probe_image,
    read_image,
    to_rgb8,
)

if TYPE_CHECKING:
    from detkit.data.types import ImageLike

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


@dataclass
class Item:
    """One image, or one frame of a video (``frame``, ``fps``; None for an image), read from a
    source: ``image`` ``H x W x 3`` uint8 RGB, or None and ``error`` saying why; ``detections``
    filled in by :meth:`detkit.Detector.predict_source`."""

    path: Path
    image: np.ndarray | None
    frame: int | None = None
    fps: float | None = None
    error: str = ""
    detections: Any = None


def to_rgb(image: ImageLike, rgb: bool = False) -> np.ndarray:
    """A path (:func:`read_checked`), a numpy array (BGR unless ``rgb``) or a PIL image -> H x W
    x 3 uint8 RGB: grey expanded, alpha dropped, 16-bit scaled by 255/65535. ``ValueError``: an
    unreadable file or a folder; ``TypeError``: another type or dtype."""
    if isinstance(image, str | Path):
        if Path(image).is_dir():
            raise ValueError(f"{image} is a folder: predict_source(folder) reads the images in it")
        try:
            return read_checked(Path(image))
        except (ValueError, OSError) as e:  # "file not found" alone does not say which file
            raise ValueError(f"{image}: {e}") from None
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        if image.mode.startswith("I"):
            return to_rgb8(np.asarray(image))
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, numpy array or PIL image, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"numpy images must be uint8 or uint16, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2 and (image.ndim != 3 or image.shape[2] not in (3, 4)):
        raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
    if image.ndim == 3 and not rgb:
        image = image[..., 2::-1]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        image = to_rgb8(image)
    return np.ascontiguousarray(image)


def _media(paths: list[Path]) -> list[Path]:
    return sorted(p for p in paths if p.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES))


def list_sources(source: str | Path) -> tuple[list[Path], list[Path]]:
    """The files a source names, and the entries of a ``.txt`` list that do not exist. A source
    is a file, a folder (not recursive), a glob (``**`` recurses) or a ``.txt`` list (paths
    relative to its folder; ``#`` starts a comment); ``FileNotFoundError`` when it names nothing."""
    path, missing = Path(source), []
    if path.is_dir():
        files = _media([p for p in path.iterdir() if p.is_file()])
    elif path.is_file() and path.suffix.lower() == ".txt":
        files = []
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            p = Path(entry) if Path(entry).is_absolute() else path.parent / entry
            (files if p.is_file() else missing).append(p)
    elif path.is_file():
        files = [path]
    else:
        found = glob.glob(str(source), recursive=True)
        files = _media([Path(p) for p in found if Path(p).is_file()])
    if not files and not missing:
        raise FileNotFoundError(f"no images or videos found at {str(source)!r}")
    return files, missing


def read_video(path: Path) -> Iterator[Item]:
    """Every frame of a video as RGB; one :class:`Item` with an error when it cannot be read."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            yield Item(path, None, error="cannot open or decode video")
            return
        fps, index = cap.get(cv2.CAP_PROP_FPS) or 25.0, 0
        while ok:
            yield Item(path, np.ascontiguousarray(frame[..., ::-1]), frame=index, fps=fps)
            ok, frame = cap.read()
            index += 1
    finally:
        cap.release()


def read_source(source: str | Path | list, max_pixels: int = MAX_PIXELS) -> Iterator[Item]:
    """One item per image or frame of a source (:func:`list_sources`) or a list of paths."""
    if isinstance(source, list | tuple):
        files, missing = [Path(p) for p in source], []
    else:
        files, missing = list_sources(source)  # raises now, not at the first item
    return _read_files(files, missing, max_pixels)


def _read_files(files: list[Path], missing: list[Path], max_pixels: int) -> Iterator[Item]:
    for path in missing:
        yield Item(path, None, error="not found")
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from read_video(path)
            continue
        try:
            image = read_checked(path, max_pixels)
        except Exception as e:  # one bad input never ends the stream (cv2.error, MemoryError)
            yield Item(path, None, error=failure(e, path))
            continue
        yield Item(path, image)


def read_checked(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`detkit.data.images.read_image` under the training scan's rules, so inference skips
    what training would: the header probe, and any message the decoder prints (``ValueError``
    naming it)."""
    with warnings.catch_warnings():  # max_pixels is checked below, before any pixel
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        probe = probe_image(path)
    if probe.problem:
        raise ValueError(probe.detail)
    with decoder_messages() as captured:
        image = read_image(path, None, max_pixels)
    message = "".join(captured).strip()
    if message:
        raise ValueError(f"decoder warning: {message.splitlines()[0][:200]}")
    return image


def failure(e: Exception, path: Path) -> str:
    """Why an input failed, in one line (the path left out: the record names it)."""
    if isinstance(e, ValueError | OSError):
        return str(e).replace(f"cannot decode image {path}: ", "")
    return f"{type(e).__name__}: {e}"
