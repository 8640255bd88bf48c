"""Checkpoints: plain tensors and Python data (``model``/``ema``, ``optimizer``/``scheduler``,
``epoch``/``step``, ``rng``, ``config``, ``class_names``, ``best_map``, ``version``), written
atomically, read with ``weights_only=True``; evaluation thresholds go beside, never inside."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.core.io import write_atomic, write_json
from detkit.models.transfer import state_mismatches

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """Missing, truncated, foreign, NaN/inf or not fitting its config's model."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically: a crash leaves the old file or the new one."""
    return write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; every verb reads checkpoints here.
    ``CheckpointError``: missing, truncated or corrupt, needs code to unpickle, not detkit's, or
    NaN/inf in ``model``/``ema`` (named); for ``last.pt``/``best.pt`` the message points at the
    run's other file when it exists."""
    from detkit.core.versions import check_versions

    check_versions()  # a torch older than the floor can be tricked into running code
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if hint := not_a_checkpoint(path):
        raise CheckpointError(f"{path} is not a detkit checkpoint: {hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = _ANSI.sub("", str(e).splitlines()[0] if str(e) else "")  # torch bolds a phrase
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {first}\n"
            "(detkit loads checkpoints with weights_only=True and refuses files that need "
            f"arbitrary code to unpickle, and files that are truncated or corrupt){_other(path)}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a detkit checkpoint (no 'model'/'config' entries)")
    bad = [
        f"{part}.{name}"
        for part in ("model", "ema")
        if isinstance(state.get(part), dict)
        and not (part == "ema" and state[part] is state["model"])
        for name in nonfinite_entries(state[part])
    ]  # a slim checkpoint's model is its EMA: checked once
    if bad:
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise CheckpointError(
            f"{path} holds NaN/inf weights, refused: {', '.join(bad[:8])}{more}{_other(path)}"
        )
    return state


def _other(path: Path) -> str:
    """A hint at the run's other checkpoint (``best.pt`` <-> ``last.pt``), if present."""
    other = {"last.pt": "best.pt", "best.pt": "last.pt"}.get(path.name)
    if other is None or not (path.parent / other).is_file():
        return ""
    return f"\n{path.parent / other} (saved at another time) may be intact: try it instead"


def load_weights(module: torch.nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """``module.load_state_dict(state_dict)``, raising one ``CheckpointError`` that lists missing,
    unexpected and mis-shaped keys (first 8 of each) instead of PyTorch's traceback."""
    problems = state_mismatches(module.state_dict(), state_dict, "checkpoint vs model")
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not fit the model its config builds; " + "; ".join(problems)
        )
    module.load_state_dict(state_dict)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _pickled_by(path: Path) -> str | None:
    """``"ultralytics"`` when a ``torch.save`` zip pickles its classes (read, never unpickled)."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            data = z.read(name)[:4_000_000] if name else b""
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    return "ultralytics" if b"ultralytics." in data else None


def not_a_checkpoint(path: Path) -> str | None:
    """What ``path`` plainly is when not a checkpoint (ONNX/TorchScript/OpenVINO export, YAML or
    JSON, text, Ultralytics ``.pt``) and what to do instead; None when it may be one.

    Example:
        >>> not_a_checkpoint(Path("best.onnx"))[:22], not_a_checkpoint(Path("x.torchscript"))[:28]
        ('this is an ONNX export', 'this is a TorchScript export')
    """
    suffix = path.suffix.lower()
    kind = {".onnx": "an ONNX", ".torchscript": "a TorchScript", ".xml": "an OpenVINO"}.get(suffix)
    if path.name.endswith("_openvino_model"):
        kind = "an OpenVINO"
    if kind is not None:
        return (
            f"this is {kind} export: run it with `detkit infer SOURCE --weights "
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
        if head.startswith(b"PK") and _pickled_by(path) == "ultralytics":
            return (
                "this is an Ultralytics model (it pickles ultralytics classes, code detkit never "
                "runs); detkit loads its own runs' best.pt / last.pt: train one on the same data "
                "with `detkit train data=DATA.yaml`"
            )
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


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, numpy and torch RNG states as weights_only-safe data, and ``device``'s CUDA
    generator alone (so the run resumes on any number of GPUs)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved, its CUDA state to ``device`` (when a GPU); a list of
    per-GPU CUDA states restores its first (rank 0's), whatever the GPU count now."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list | tuple):  # one state per GPU of the saving machine
        cuda = cuda[0] if cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def load_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any] | None) -> None:
    """Restore a GradScaler's state, or keep its fresh one for an empty ``state`` (bf16 and no-AMP
    runs save a disabled scaler's ``{}``, which an enabled scaler rejects)."""
    if state:
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("the checkpoint holds no GradScaler state (saved without fp16): the scaler "
                 "starts at its initial scale")  # fmt: skip


FP16_MAX = 65504.0  # the largest finite float16


def slim_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """What a finished run keeps: EMA weights in float16 (as ``model`` and ``ema``, one copy on
    disk; tensors that would overflow stay float32), config, counters, history, scheduler; no
    optimiser state, no raw weights. It still resumes: the optimiser restarts from the EMA.

    Example:
        >>> sd = {"w": torch.ones(2), "big": torch.tensor([1e6]), "n": torch.tensor(3)}
        >>> slim = slim_checkpoint({"model": sd, "ema": sd, "optimizer": {}, "epoch": 3})
        >>> sorted(slim), slim["ema"]["w"].dtype, slim["ema"]["big"].dtype, slim["model"] is slim["ema"]
        (['ema', 'epoch', 'model', 'slim'], torch.float16, torch.float32, True)
    """
    ema = {name: _half(t) for name, t in (state.get("ema") or state["model"]).items()}
    kept = {k: v for k, v in state.items() if k not in ("model", "ema", "optimizer")}
    return {**kept, "model": ema, "ema": ema, "slim": True}  # one dict: torch.save stores it once


def _half(t: object) -> object:
    """``t`` in float16 when it is a float tensor that fits; anything else as it is."""
    if not (torch.is_tensor(t) and t.is_floating_point()) or t.dtype == torch.float16:
        return t
    if t.numel() and float(t.abs().max()) > FP16_MAX:
        return t
    return t.half()


def slim_in_place(path: str | Path) -> Path:
    """Rewrite a checkpoint file as :func:`slim_checkpoint`, atomically; a slim one stays."""
    state = load_checkpoint(path)
    if state.get("slim"):
        return Path(path)
    return save_checkpoint(slim_checkpoint(state), path)


THRESHOLDS_SUFFIX = ".thresholds.json"


def thresholds_file(weights: str | Path) -> Path:
    """Where ``detkit eval`` records a checkpoint's F1-optimal thresholds: beside it.

    Example:
        >>> thresholds_file("runs/train/exp/best.pt").as_posix()
        'runs/train/exp/best.thresholds.json'
    """
    weights = Path(weights)
    return weights.with_name(weights.stem + THRESHOLDS_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_thresholds(weights: str | Path, thresholds: dict[str, Any]) -> Path:
    """Write ``thresholds`` (at least ``{"conf": float}``) to :func:`thresholds_file` with the
    checkpoint's SHA-256, so ``conf="best"`` refuses them for a changed checkpoint."""
    record = {**thresholds, "weights": Path(weights).name, "sha256": file_sha256(weights)}
    return write_json(thresholds_file(weights), record, indent=1)


def best_conf(state: dict[str, Any], path: str | Path) -> float:
    """The F1-optimal conf recorded for ``path``: its :func:`thresholds_file`, else ``state``'s
    ``thresholds`` (``ValueError`` when none is, or the file records another checkpoint)."""
    beside = thresholds_file(path)
    if beside.is_file():
        record = json.loads(beside.read_text(encoding="utf-8"))
        if record.get("sha256") != file_sha256(path):
            raise ValueError(
                f"conf=best: {beside} was measured on another {Path(path).name} (the file has "
                f"changed since); run `detkit eval --weights {path}` again, or give a number"
            )
        return float(record["conf"])
    stored = state.get("thresholds") or {}
    if stored.get("conf") is None:
        raise ValueError(
            f"conf=best: no F1-optimal threshold recorded for {path}; run `detkit eval "
            f"--weights {path}` once (it writes {beside.name} beside it), or give a number"
        )
    return float(stored["conf"])
