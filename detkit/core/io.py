"""Atomic writes (temp file, fsync, rename: the old file or the new, never a part); run folders."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np

# what ``json.dumps`` writes, numpy scalars included (see :func:`write_json`)
JSON: TypeAlias = (
    "dict[str, JSON] | list[JSON] | tuple[JSON, ...] | str | float | np.generic | None"
)

log = logging.getLogger(__name__)


class WriteError(OSError):
    """A file could not be written (disk full, read-only folder, a folder deleted meanwhile);
    the message names the file and what was kept. ``errno`` is the cause's."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (folders created); a clean exit replaces ``path``
    durably with the mode ``open`` would give, an exception leaves ``path`` untouched. An
    ``OSError`` (also one a writer wrapped) is raised as a :class:`WriteError` naming ``path``
    and what was kept."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e, None) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp, os.O_RDWR)
        mask = os.umask(0)  # 0666 minus the umask, not mkstemp's 0600: another uid may read it
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException as e:
        left = None
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            left = tmp  # named in the error: the partial file could not be removed
        if (cause := _os_error(e)) is None:
            raise
        raise _write_error(path, cause, left) from None
    try:
        if os.name != "nt":  # Windows cannot open a folder, and needs no folder fsync
            _fsync(path.parent, os.O_RDONLY)
    except OSError as e:  # the file is in place; only its durability is in doubt
        raise _write_error(path, e, None, written=True) from None


def _os_error(e: BaseException) -> OSError | None:
    """``e`` or the first ``OSError`` it was raised from (a writer may wrap one)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _write_error(
    path: Path, cause: OSError, left: Path | None, written: bool = False
) -> WriteError:
    reason = cause.strerror or str(cause)
    if written:
        kept = f"{path.name} was written but may not survive a power cut"
    elif path.exists():
        kept = f"the previous {path.name} is unchanged"
    elif not path.parent.is_dir():
        kept = f"nothing was written ({path.parent} does not exist)"
    else:
        kept = "nothing was written"
    extra = f"; the partial file {left} could not be removed" if left else ""
    return WriteError(f"cannot write {path}: {reason}; {kept}{extra}", cause.errno)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary file and put the result at ``path`` atomically; returns it."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a Path."""
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path`` as a Path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: JSON, indent: int | None = None) -> Path:
    """Write ``obj`` as JSON (numpy scalars as numbers) to ``path`` atomically; returns it."""
    return write_text(path, json.dumps(obj, default=_json_default, indent=indent))


def json_float(value: float | None) -> float | None:
    """``value`` as a JSON number; ``NaN`` (and None) as None."""
    return None if value is None or math.isnan(value) else float(value)


def _json_default(value: object) -> JSON:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync(path: Path, flags: int) -> None:
    """Flush a file's data (``O_RDWR``) or a folder's renames (``O_RDONLY``) to the disk."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def decodable(text: str) -> str:
    """``text`` with each undecodable file-name byte (surrogate ``U+DCNN``) written as ``xNN``.

    Example:
        >>> decodable(os.fsdecode(b"caf\\xe9.jpg")), decodable("café.jpg")
        ('cafxe9.jpg', 'café.jpg')
    """
    return re.sub("[\udc80-\udcff]", lambda m: f"x{ord(m.group()) - 0xDC00:02x}", text)


def clean_part(text: str) -> str:
    """One path component that cannot leave its folder: letters, digits, ``._-``; no dot first.

    Example:
        >>> clean_part("a b/c"), clean_part(".."), clean_part(".env"), clean_part("照片")
        ('a_b_c', 'input', '_env', '照片')
    """
    text = re.sub(r"[^\w.-]+", "_", text)  # separators, spaces, control characters
    text = re.sub(r"^\.+", "_", text)[:100]  # no "..", no hidden files
    return text if text.strip("._") else "input"


def safe_stem(name: str) -> str:
    """The stem of an input's base name, cleaned (see :func:`clean_part`).

    Example:
        >>> safe_stem("../../x.jpg"), safe_stem("a b/ç?.png"), safe_stem(r"C:\\a\\..\\y.png")
        ('x', 'ç_', 'y')
    """
    return clean_part(Path(name.replace("\\", "/")).stem)


def next_run_dir(project: str | Path, name: str = "", exist_ok: bool = False) -> Path:
    """A new folder ``project/name`` (default ``exp``), numbered ``name2``, ... when it exists;
    ``exist_ok`` writes into ``project/name`` as it is."""
    project = Path(project)
    base = name or "exp"
    if exist_ok:
        folder = project / base
        if folder.is_dir() and any(folder.iterdir()):
            log.warning("exist_ok: writing into %s; files of the same name there are replaced",
                        folder)  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    for i in range(1, 10_000):
        candidate = project / (base if i == 1 else f"{base}{i}")
        if not candidate.exists():
            candidate.mkdir(parents=True)
            return candidate
    raise RuntimeError(f"no free run folder under {project}")


@contextlib.contextmanager
def removed_if_left_empty(folder: Path | None) -> Iterator[None]:
    """Remove ``folder`` when the block fails with it still empty (no empty run folder left)."""
    try:
        yield
    except BaseException:
        if folder is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def default_cache_dir() -> Path:
    """``$DETKIT_HOME/cache`` (DETKIT_HOME defaults to ``~/.cache/detkit``)."""
    return Path(os.environ.get("DETKIT_HOME", "~/.cache/detkit")).expanduser() / "cache"
