"""Dependency floors checked at run time (an environment may hold vulnerable versions); extras."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re
import sys
from importlib import metadata
from types import ModuleType

logger = logging.getLogger(__name__)

FLOORS: dict[str, tuple[tuple[int, ...], str]] = {
    "torch": ((2, 10), "torch.load(weights_only=True) can be bypassed before 2.10 (CVE-2025-32434, CVE-2026-24747)"),
    "torchvision": ((0, 25), "the torchvision release of torch 2.10"),
    "cv2": ((4, 12), "OpenCV before 4.12 has CVE-2025-53644"),
    "PIL": ((11, 3), "Pillow before 11.3 has CVE-2025-48379"),
}  # fmt: skip
"""Module name -> (lowest version, why)."""
DISTRIBUTIONS = {"torch": "torch", "torchvision": "torchvision", "cv2": "opencv-python-headless",
                 "PIL": "pillow"}  # fmt: skip
"""Module name -> the distribution that installs it (read when the module is not imported)."""


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string.

    Example:
        >>> parse_version("2.14.1+cu130"), parse_version("4.12.0.88"), parse_version("13.0.0rc1")
        ((2, 14, 1), (4, 12, 0, 88), (13, 0, 0))
    """
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0].split("rc")[0])[:4])


def outdated(versions: dict[str, str]) -> list[str]:
    """One line per module in ``versions`` (name -> version string) below its floor."""
    lines = []
    for name, version in versions.items():
        floor, why = FLOORS[name]
        if parse_version(version) < floor:
            lines.append(f"{name} {version} < {'.'.join(map(str, floor))}: {why}")
    return lines


@functools.cache
def check_versions() -> list[str]:
    """Warn (once per process) about dependencies below their floor; returns the lines. A module
    not imported yet is read from its distribution's metadata: importing torchvision only to read
    its version would also import ``torch._dynamo``, a second of start-up."""
    versions = {}
    for name in FLOORS:
        with contextlib.suppress(ImportError, AttributeError):  # not installed: nothing to check
            module = sys.modules.get(name)
            versions[name] = (
                str(module.__version__) if module else metadata.version(DISTRIBUTIONS[name])
            )
    lines = outdated(versions)
    for line in lines:
        logger.warning("outdated dependency: %s; upgrade it (pip install -U)", line)
    return lines


class MissingPackage(ImportError):
    """An optional package a feature needs is missing; the message says how to install it."""


def require(module: str, feature: str, install: str, package: str = "") -> ModuleType:
    """Import an optional package, or raise :class:`MissingPackage` saying which ``feature``
    (``"OpenVINO export"``) needs ``package`` (default: ``module``'s top level) and how to
    ``install`` it (``"pip install 'detkit[openvino]'"``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = package or module.split(".")[0]
        raise MissingPackage(f"{feature} needs the {name!r} package ({e.msg}): {install}") from None
