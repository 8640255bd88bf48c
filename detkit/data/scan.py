"""The full decode at scan time: every admitted image is decoded once, so none fails mid-epoch.

The header probe (:func:`detkit.data.images.probe_image`) cannot see damaged compressed data (a
PNG whose IDAT is corrupt, a JPEG cut early whose header happens to hold ``FF D9``), and libjpeg
decodes some damaged JPEGs into garbage with only a warning on the process's stderr. So when a
split is opened, each image goes once through :func:`~detkit.data.images.read_image` (the
decoder of every other path) in worker processes whose file descriptor 2 is a private file: any
decoder message written there counts as corrupt ("Premature end of JPEG file", "Corrupt JPEG
data", "libpng error"), as does any decode error. A decoder that crashes takes down its worker
only; the file is then reported as crashing the decoder.

Verdicts are cached in plain JSON (never pickle) under ``cache_dir/decode/``, one file per images
folder, keyed per file on ``(size, mtime_ns)`` and per cache on the detkit version and
``max_pixels``: a second start decodes only new or changed files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from detkit.data.images import read_image
from detkit.io import write_json

logger = logging.getLogger(__name__)

PROGRESS_MIN_DECODES = 200
"""Decoding at least this many uncached images shows a progress bar (on a terminal)."""

_stderr_file: Any = None  # the worker's private fd 2 (set by _capture_stderr)


def decode_problems(
    paths: Sequence[Path],
    max_pixels: int,
    workers: int | None = None,
    cache_file: Path | None = None,
) -> list[str]:
    """Decode every file once (in worker processes) and say what is wrong with each.

    Args:
        paths: image files (already probed: they exist and have an allowed header).
        max_pixels: the decoder's pixel limit (part of the cache key).
        workers: worker processes (None: the CPU count, at most 8); at least one is always
            used, since a decoder's stderr can only be captured in a process of its own.
        cache_file: JSON file of earlier verdicts (read and updated), or None for no cache.

    Returns:
        One string per path: ``""`` when it decodes cleanly, else the reason.
    """
    from detkit import __version__

    policy = {"detkit": __version__, "max_pixels": int(max_pixels)}
    keys = [_file_key(p) for p in paths]
    cached = _read_cache(cache_file, policy)
    names = [os.fsdecode(os.path.abspath(p)) for p in paths]
    out: list[str | None] = [_hit(cached.get(n), k) for n, k in zip(names, keys, strict=True)]
    todo = [i for i, r in enumerate(out) if r is None]
    if todo:
        n = max(1, min(workers or min(8, os.cpu_count() or 1), len(todo)))
        found = _decode_all([paths[i] for i in todo], max_pixels, n)
        for i, reason in zip(todo, found, strict=True):
            out[i] = reason
            cached[names[i]] = [*keys[i], reason]
        if cache_file is not None:
            _write_cache(cache_file, policy, cached)
    logger.debug(
        "decoded %d of %d images (%d from cache)", len(todo), len(paths), len(paths) - len(todo)
    )
    return [r or "" for r in out]


def cache_file_for(cache_dir: Path, images_root: Path) -> Path:
    """The verdict cache of the images under ``images_root``: ``cache_dir/decode/<sha1>.json``."""
    digest = hashlib.sha1(os.fsencode(os.path.abspath(images_root))).hexdigest()[:16]
    return Path(cache_dir) / "decode" / f"{digest}.json"


def _file_key(path: Path) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _hit(entry: Any, key: list[int]) -> str | None:
    """The cached reason when ``entry`` is ``[size, mtime_ns, reason]`` for this ``key``."""
    if isinstance(entry, list) and len(entry) == 3 and entry[:2] == key and key[0] >= 0:
        return str(entry[2])
    return None


def _read_cache(cache_file: Path | None, policy: dict[str, Any]) -> dict[str, Any]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        doc = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable decode cache %s (%s)", cache_file, e)
        return {}
    if not isinstance(doc, dict) or doc.get("policy") != policy:
        return {}
    files = doc.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(cache_file: Path, policy: dict[str, Any], files: dict[str, Any]) -> None:
    """Write atomically (:mod:`detkit.io`); a failure only costs the next start a decode."""
    try:
        write_json(cache_file, {"policy": policy, "files": files})
    except OSError as e:
        logger.warning("could not write the decode cache %s (%s)", cache_file, e)


def _decode_all(paths: list[Path], max_pixels: int, workers: int) -> list[str]:
    """Reasons for ``paths`` from a pool of ``workers``; after a worker crash, the files not yet
    done are retried one pool each, so only the file that crashes its decoder is blamed."""
    args = [(os.fspath(p), max_pixels) for p in paths]
    bar = tqdm(total=len(paths), desc="decoding", unit="img",
               disable=len(paths) < PROGRESS_MIN_DECODES or None)  # fmt: skip
    out: list[str] = []
    with bar:
        try:
            with _pool(workers) as pool:
                for reason in pool.map(_check, args, chunksize=max(1, len(args) // (8 * workers))):
                    out.append(reason)
                    bar.update()
        except BrokenProcessPool:
            for a in args[len(out) :]:
                out.append(_check_alone(a))
                bar.update()
    return out


def _check_alone(arg: tuple[str, int]) -> str:
    try:
        with _pool(1) as pool:
            return pool.submit(_check, arg).result()
    except BrokenProcessPool:
        return "the decoder crashed on this file"


def _pool(workers: int) -> ProcessPoolExecutor:
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), initializer=_capture_stderr
    )


def _capture_stderr() -> None:
    """Worker initialiser: point file descriptor 2 at a private temporary file."""
    global _stderr_file
    _stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker)
    os.dup2(_stderr_file.fileno(), 2)


def _check(arg: tuple[str, int]) -> str:
    """In a worker: decode one file; ``""`` or the reason (an error or a decoder message)."""
    path, max_pixels = arg
    start = _stderr_file.seek(0, os.SEEK_END) if _stderr_file is not None else 0
    try:
        read_image(path, 1, max_pixels)
        reason = ""
    except (ValueError, OSError) as e:
        reason = str(e).replace(f"cannot decode image {path}: ", "")
    if _stderr_file is not None:
        _stderr_file.seek(start)
        message = _stderr_file.read().decode("utf-8", "replace").strip()
        if message and not reason:
            reason = f"decoder warning: {message.splitlines()[0][:200]}"
    return reason
