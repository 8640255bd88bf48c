"""Helpers shared by the command-line verbs."""

from __future__ import annotations

import argparse
from pathlib import Path


def newest_weights(project: str = "runs/train", name: str = "best.pt") -> Path:
    """The most recently written ``best.pt`` (or ``name``) under ``project``."""
    found = sorted(Path(project).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not found:
        what = "no --weights given and" if name == "best.pt" else "resume=true:"
        raise FileNotFoundError(f"{what} no {project}/*/{name} found; train first")
    return found[-1]


def pick_weights(given: str | None, project: str = "runs/train") -> Path:
    """The weights a verb uses, printed: ``--weights`` when given, else the newest ``best.pt``
    (said so, with how to choose another)."""
    if given:
        path = Path(given)
        print(f"weights: {path}")
        return path
    path = newest_weights(project)
    print(f"weights: {path} (the newest {project}/*/best.pt; choose with --weights)")
    return path


def fraction(text: str) -> float:
    """A number in [0, 1] (``--iou``, a baked ``--conf``); else a one-line argument error.

    Example:
        >>> fraction("0.7")
        0.7
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a threshold lies in [0, 1], got {value}")
    return value


def conf_value(text: str) -> float | str:
    """``--conf``: a number in [0, 1], or ``best`` (the threshold ``detkit eval`` stored)."""
    return text if text == "best" else fraction(text)
