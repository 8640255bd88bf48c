"""Helpers shared by the command-line verbs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_weights(p: argparse.ArgumentParser, what: str = "checkpoint") -> None:
    """``--weights``, by default the newest ``runs/train/*/best.pt``."""
    p.add_argument("--weights", help=f"{what} (default: newest runs/train/*/best.pt)")


def check_keys(verb: str, args: argparse.Namespace) -> None:
    """A verb's ``check``: the overrides' names, types and use by ``verb``, before torch."""
    from detkit.api import check_verb_keys
    from detkit.config import check_overrides

    check_verb_keys(verb, check_overrides(args.overrides))


def newest_weights(project: str = "runs/train", name: str = "best.pt") -> Path:
    """The most recently written ``best.pt`` (or ``name``) under ``project``."""
    found = sorted(Path(project).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not found:
        what = "no --weights given and" if name == "best.pt" else "resume=true:"
        raise FileNotFoundError(f"{what} no {project}/*/{name} found; train first")
    return found[-1]


def pick_weights(given: str | None) -> Path:
    """``--weights`` when given, else the newest ``best.pt``; printed (how to choose another)."""
    path = Path(given) if given else newest_weights()
    how = "" if given else " (the newest runs/train/*/best.pt; choose with --weights)"
    print(f"weights: {path}{how}")
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
