"""Helpers shared by the command-line verbs."""

from __future__ import annotations

from pathlib import Path


def newest_weights(project: str = "runs/train") -> Path:
    """The most recently written ``best.pt`` under ``project``."""
    found = sorted(Path(project).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no --weights given and no {project}/*/best.pt found; train first")
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
