"""Resuming a run from its ``last.pt``: what may change, what may not, and the exact continuation.

A resumed run (:func:`detkit.api.resume`) rebuilds everything from the checkpoint's own
config, restores weights, EMA (with
its update counter), optimiser, scheduler, scaler, counters and random states, and restarts the
loader at the saved epoch and batch. On a CPU with a fixed seed it ends bit-identical to a run
that was never stopped (``tests/test_train_resume.py``).

``key=value`` overrides may change how the run is driven (:data:`OPERATIONAL`, e.g. ``epochs``
to extend a finished run); other training settings may change with a warning that the result
will differ from an uninterrupted run; the model, the image size and the class list may not.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# fields that change how the run is driven, never what a step computes
OPERATIONAL = frozenset({
    "epochs", "max_steps", "patience", "device", "workers", "quiet", "eval_every", "save_every",
    "tensorboard", "plots", "max_nonfinite", "project", "name", "cache_images", "cache_dir",
    "dist_timeout", "val_batch",
})  # fmt: skip


class ResumeError(ValueError):
    """A checkpoint that cannot continue under the given config."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"section.key": value}``.

    Example:
        >>> flatten({"train": {"lr": 0.1}, "model": {"widths": [8]}})
        {'train.lr': 0.1, 'model.widths': [8]}
    """
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every dotted key whose value differs.

    Example:
        >>> config_changes({"train": {"lr": 0.1, "epochs": 2}}, {"train": {"lr": 0.1, "epochs": 5}})
        [('train.epochs', 2, 5)]
    """
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def check_resumable(
    ckpt: dict[str, Any], saved: dict[str, Any], new_config: dict[str, Any], path: str | Path
) -> None:
    """Refuse a resume that cannot continue the run, naming every difference; warn about
    settings that can change but make the run differ from an uninterrupted one.

    Args:
        ckpt: the checkpoint. saved: its config as a nested dict, today's defaults filled in.
        new_config: the config the run would continue under. path: the checkpoint, for messages.

    Raises:
        ResumeError: the model, image size (or, mid-epoch, the batch) differ, or the run is
            already finished under the new settings.
    """
    changes = config_changes(saved, new_config)
    mid_epoch = ckpt.get("batch_in_epoch", 0) > 0
    fixed = {"train.img_size"} | ({"train.batch", "train.nominal_batch"} if mid_epoch else set())
    wrong = [c for c in changes if c[0].startswith("model.") or c[0] in fixed]
    if wrong:
        lines = "\n".join(f"  {k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in wrong)
        raise ResumeError(
            f"cannot resume {path}: a run keeps its model and image size"
            f"{' (and batch, mid-epoch)' if mid_epoch else ''}, but these differ:\n{lines}\n"
            "start a new run for a different model or size"
        )
    _check_not_finished(ckpt, flatten(saved), flatten(new_config), path)
    for key, a, b in changes:
        if key.split(".", 1)[1] not in OPERATIONAL:
            log.warning("resuming with %s changed (%r -> %r): the run will differ from one never "
                        "stopped", key, a, b)  # fmt: skip


def _check_not_finished(
    ckpt: dict[str, Any], saved: dict[str, Any], new: dict[str, Any], path: str | Path
) -> None:
    epoch, epochs, step = ckpt["epoch"], new["train.epochs"], ckpt["step"]
    if epoch >= epochs:
        raise ResumeError(
            f"{path} finished at epoch {epoch} of {epochs}; pass epochs=N with N > {epoch} "
            "to extend it"
        )
    if ckpt.get("stop_reason") == "early_stop" and new["train.patience"] == saved["train.patience"]:
        raise ResumeError(
            f"{path} stopped early at epoch {epoch} (no better mAP50-95 in "
            f"{new['train.patience']} epochs); pass patience=0 or a larger patience to go on"
        )
    if 0 < new["train.max_steps"] <= step:
        raise ResumeError(
            f"{path} stopped at max_steps={new['train.max_steps']} (step {step}); pass "
            "max_steps=0 (or a larger number) to go on"
        )


def check_classes(saved: list[str], current: list[str], path: str | Path) -> None:
    """Refuse a dataset whose class list differs from the checkpoint's, saying how.

    Raises:
        ResumeError: the lists differ (names, or their order, which fixes the label numbers).
    """
    if list(saved) == list(current):
        return
    missing = [c for c in saved if c not in current]
    new = [c for c in current if c not in saved]
    how = []
    if missing:
        how.append(f"not in the dataset: {', '.join(missing)}")
    if new:
        how.append(f"new in the dataset: {', '.join(new)}")
    if not how:
        how.append("the same names in another order (labels would swap)")
    raise ResumeError(
        f"cannot resume {path}: the dataset's classes differ from the checkpoint's\n"
        f"  checkpoint: {list(saved)}\n  dataset:    {list(current)}\n  {'; '.join(how)}"
    )
