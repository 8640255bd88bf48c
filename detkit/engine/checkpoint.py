"""Checkpoints: plain tensors and plain Python data, written atomically, read with weights_only.

A checkpoint is a dict with ``model`` and ``ema`` state dicts, ``optimizer`` and ``scheduler``
state, ``epoch``/``step`` counters, ``rng`` states, the resolved ``config`` as a nested dict,
``class_names``, ``best_map`` and ``version``. Nothing in it needs pickle to run code, so
:func:`load_checkpoint` uses ``torch.load(weights_only=True)`` and refuses anything else.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.io import write_atomic


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, not a detkit checkpoint, holding
    NaN/inf weights, or weights that do not fit the model of its config."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`detkit.io.write_atomic`: temp file in the
    same folder, fsync, rename): a crash at any moment leaves the old file or the new one."""
    return write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; every verb reads checkpoints here.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds objects that would need
            arbitrary code to unpickle, is not a detkit checkpoint, or holds NaN/inf in its
            ``model`` or ``ema`` weights (each named). For ``last.pt`` / ``best.pt`` the message
            points at the other file of the run when it exists.
    """
    from detkit.versions import check_versions

    check_versions()  # a torch older than the floor can be tricked into running code
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if hint := not_a_checkpoint(path):
        raise CheckpointError(f"{path} is not a detkit checkpoint: {hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}\n"
            "(detkit loads checkpoints with weights_only=True and refuses files that need "
            f"arbitrary code to unpickle, and files that are truncated or corrupt){_other(path)}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a detkit checkpoint (no 'model'/'config' entries)")
    bad = [
        f"{part}.{name}"
        for part in ("model", "ema")
        if isinstance(state.get(part), dict)
        for name in nonfinite_entries(state[part])
    ]
    if bad:
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise CheckpointError(
            f"{path} holds NaN/inf weights, refused: {', '.join(bad[:8])}{more}{_other(path)}"
        )
    return state


def _other(path: Path) -> str:
    """A hint at the run's other checkpoint (``best.pt`` for ``last.pt`` and back), if present."""
    other = {"last.pt": "best.pt", "best.pt": "last.pt"}.get(path.name)
    if other is None or not (path.parent / other).is_file():
        return ""
    return f"\n{path.parent / other} (saved at another time) may be intact: try it instead"


def load_weights(module: torch.nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """``module.load_state_dict(state_dict)``, refusing any key or shape mismatch with one
    message that lists them (not PyTorch's traceback).

    Raises:
        CheckpointError: keys missing from or unexpected in ``state_dict``, or tensors whose
            shape differs from the module's (each listed, the first 8 of each kind).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict
        and torch.is_tensor(state_dict[k])
        and state_dict[k].shape != own[k].shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches, checkpoint vs model", shapes),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not fit the model its config builds; " + "; ".join(problems)
        )
    module.load_state_dict(state_dict)


def not_a_checkpoint(path: Path) -> str | None:
    """What ``path`` is when it is plainly not a checkpoint (an ONNX export, a YAML or JSON
    config, a text file), with what to do instead; None when it may be one.

    Example:
        >>> not_a_checkpoint(Path("best.onnx"))[:22]
        'this is an ONNX export'
    """
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return (
            "this is an ONNX export: run it with `detkit infer SOURCE --weights "
            f"{path}` or Detector.from_checkpoint; eval and export need the .pt it came from"
        )
    if suffix in (".yaml", ".yml", ".json"):
        return (
            f"this is a {'JSON' if suffix == '.json' else 'YAML'} file, not weights: pass a "
            "config with `detkit train --config FILE` (data files with data=FILE), and "
            "weights as runs/train/<name>/best.pt"
        )
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(512)
        if head and not head.startswith(b"PK") and _is_text(head):
            return "this is a text file; detkit checkpoints are best.pt / last.pt of a run"
    return None


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def nonfinite_entries(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` holding a NaN or inf.

    Example:
        >>> nonfinite_entries({"a": torch.ones(2), "b": torch.tensor([0.0, float("nan")])})
        ['b']
    """
    return [
        name
        for name, t in state_dict.items()
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain data (weights_only-safe)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def store_thresholds(path: str | Path, thresholds: dict[str, Any]) -> Path:
    """Record an evaluation's F1-optimal score thresholds in a checkpoint, atomically.

    ``Detector.from_checkpoint(path, conf="best")`` (and ``detkit infer --conf best``) reads
    ``thresholds["conf"]`` back. Everything else in the checkpoint is kept as it was.

    Args:
        path: a detkit checkpoint (rewritten through :func:`save_checkpoint`).
        thresholds: plain data, at least ``{"conf": float}``.
    """
    state = load_checkpoint(path)
    state["thresholds"] = thresholds
    return save_checkpoint(state, path)


def best_conf(state: dict[str, Any], path: str | Path) -> float:
    """The F1-optimal threshold the last ``detkit eval`` stored in a checkpoint.

    Raises:
        ValueError: the checkpoint has none (it was never evaluated by ``detkit eval``).
    """
    stored = state.get("thresholds") or {}
    if stored.get("conf") is None:
        raise ValueError(
            f"conf=best: {path} holds no F1-optimal threshold; run `detkit eval --weights {path}`"
            " once (it stores the threshold in the checkpoint), or give a number"
        )
    return float(stored["conf"])
