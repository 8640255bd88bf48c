"""The full decode at scan time: each admitted image goes once through ``read_image`` in worker
processes whose fd 2 is a private file, so a decoder's warning or crash counts as corruption;
verdicts are cached as SHA-1'd JSON under ``cache_dir/decode/`` (see docs/architecture.md)."""

from __future__ import annotations

import contextlib
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

from detkit.core.io import write_json
from detkit.data.images import decoder_messages, read_image
from detkit.data.index import decoder_versions, file_keys

logger = logging.getLogger(__name__)

PROGRESS_MIN_DECODES = 200
"""Decoding at least this many uncached images shows a progress bar (on a terminal)."""


def decode_problems(
    paths: Sequence[Path],
    max_pixels: int,
    workers: int | None = None,
    cache_file: Path | None = None,
) -> list[str]:
    """Per probed path, ``""`` when it decodes cleanly, else the reason; ``workers`` (None: CPU
    count, at most 8; at least 1, to capture stderr); ``cache_file`` is read and updated."""
    policy = {"max_pixels": int(max_pixels), "decoders": decoder_versions()}
    keys = file_keys(paths).tolist()
    cached = _read_cache(cache_file, policy)
    names = [os.fsdecode(os.path.abspath(p)) for p in paths]
    out: list[str | None] = [_hit(cached.get(n), k) for n, k in zip(names, keys, strict=True)]
    if todo := [i for i, r in enumerate(out) if r is None]:
        n = max(1, min(workers or min(8, os.cpu_count() or 1), len(todo)))
        found = _decode_all([paths[i] for i in todo], max_pixels, n)
        for i, reason in zip(todo, found, strict=True):
            out[i] = reason
            cached[names[i]] = [*keys[i], reason]
        if cache_file is not None:
            _write_cache(cache_file, policy, _pruned(cached))
    logger.debug(
        "decoded %d of %d images (%d from cache)", len(todo), len(paths), len(paths) - len(todo)
    )
    return [r or "" for r in out]


def cache_file_for(cache_dir: Path, images_root: Path) -> Path:
    """The verdict cache of the images under ``images_root``: ``cache_dir/decode/<sha1>.json``."""
    digest = hashlib.sha1(os.fsencode(os.path.abspath(images_root))).hexdigest()[:16]
    return Path(cache_dir) / "decode" / f"{digest}.json"


def _hit(entry: object, key: list[int]) -> str | None:
    """The reason of a cached ``[size, mtime_ns, inode, ctime_ns, reason]`` entry for ``key``."""
    if isinstance(entry, list) and len(entry) == 5 and entry[:4] == key and key[0] >= 0:
        return str(entry[4])
    return None


def _pruned(files: dict[str, Any]) -> dict[str, Any]:
    """The entries whose file still has the key they were checked with."""
    names = list(files)
    now = file_keys(names).tolist()
    return {n: files[n] for n, k in zip(names, now, strict=True) if _hit(files[n], k) is not None}


def _digest(policy: dict[str, Any], files: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps([policy, files], sort_keys=True).encode()).hexdigest()


def _read_cache(cache_file: Path | None, policy: dict[str, Any]) -> dict[str, Any]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        doc = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable decode cache %s (%s)", cache_file, e)
        return {}
    if not isinstance(doc, dict) or doc.get("policy") != policy:
        return {}  # another decoder, detkit or pixel limit: its verdicts do not hold
    files = doc.get("files")
    if not isinstance(files, dict) or doc.get("sha1") != _digest(policy, files):
        logger.warning("ignoring the decode cache %s: its verdicts do not match their digest "
                       "(edited or damaged); every image is decoded again", cache_file)  # fmt: skip
        return {}
    return files


def _write_cache(cache_file: Path, policy: dict[str, Any], files: dict[str, Any]) -> None:
    """Write atomically (:mod:`detkit.core.io`); a failure only costs the next start a decode."""
    try:
        write_json(cache_file, {"policy": policy, "files": files, "sha1": _digest(policy, files)})
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
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=catch_decoder_output_here)


_CATCH: Any = None  # this process's decoder-message file (set in loader and scan workers)


def catch_decoder_output_here() -> None:
    """A loader or scan worker's initialiser: :func:`catch_decoder_output` then counts decoder
    messages in this process (never a caller's own: fd 2 is the whole process's)."""
    global _CATCH
    _CATCH = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker)


def catch_decoder_output() -> contextlib.AbstractContextManager[list[str]]:
    """What a decoder writes to fd 2 inside the block, in the yielded list and passed on to
    stderr; a no-op unless :func:`catch_decoder_output_here` ran in this process."""
    return contextlib.nullcontext([]) if _CATCH is None else decoder_messages(_CATCH, echo=True)


def _check(arg: tuple[str, int]) -> str:
    """In a worker: decode one file; ``""`` or the reason (an error or a decoder message)."""
    path, max_pixels = arg
    with decoder_messages(_CATCH) as caught:
        try:
            read_image(path, 1, max_pixels)
            reason = ""
        except (ValueError, OSError) as e:
            reason = str(e).replace(f"cannot decode image {path}: ", "")
    if caught and not reason:
        reason = f"decoder warning: {caught[0].splitlines()[0][:200]}"
    return reason
