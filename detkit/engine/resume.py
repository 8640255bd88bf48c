"""Resuming a run from its ``last.pt``: what may change, what may not, and the exact continuation.

A resumed run rebuilds everything from the checkpoint's own config, restores weights, EMA (with
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

from detkit.config import Config, config_from_dict
from detkit.engine import distributed as ddp
from detkit.engine.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

# fields that change how the run is driven, never what a step computes
OPERATIONAL = frozenset({
    "epochs", "max_steps", "patience", "device", "workers", "quiet", "eval_every", "save_every",
    "tensorboard", "plots", "max_nonfinite", "project", "name", "cache_images", "cache_dir",
})  # fmt: skip


AUTO = "auto"  # ``--resume auto``: continue the named run if it has a last.pt, else start it


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


def check_resumable(ckpt: dict[str, Any], new_config: dict[str, Any], path: str | Path) -> None:
    """Refuse a resume that cannot continue the run, naming every difference; warn about
    settings that can change but make the run differ from an uninterrupted one.

    Raises:
        ResumeError: the model, image size (or, mid-epoch, the batch) differ, or the run is
            already finished under the new settings.
    """
    saved = config_from_dict(ckpt["config"]).to_dict()  # with today's defaults filled in
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
    ckpt: dict[str, Any], saved: dict[str, Any], cfg: dict[str, Any], path: str | Path
) -> None:
    epoch, epochs, step = ckpt["epoch"], cfg["train.epochs"], ckpt["step"]
    if epoch >= epochs:
        raise ResumeError(
            f"{path} finished at epoch {epoch} of {epochs}; pass epochs=N with N > {epoch} "
            "to extend it"
        )
    if ckpt.get("stop_reason") == "early_stop" and cfg["train.patience"] == saved["train.patience"]:
        raise ResumeError(
            f"{path} stopped early at epoch {epoch} (no better mAP50-95 in "
            f"{cfg['train.patience']} epochs); pass patience=0 or a larger patience to go on"
        )
    if 0 < cfg["train.max_steps"] <= step:
        raise ResumeError(
            f"{path} stopped at max_steps={cfg['train.max_steps']} (step {step}); pass "
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


def resume(
    checkpoint: str | Path, overrides: list[str] | None = None, epochs: int | None = None
) -> Path | None:
    """Continue the run that wrote ``checkpoint`` (its ``last.pt``) in the same folder.

    Args:
        checkpoint: path to ``last.pt``.
        overrides: ``key=value`` changes, e.g. ``["epochs=40"]`` to extend a finished run.
        epochs: shorthand for ``epochs=N``.

    Returns:
        The run folder (None on DDP ranks other than 0).

    Raises:
        ResumeError: see :func:`check_resumable` and :func:`check_classes`.
        CheckpointError: the file is missing, truncated or not a detkit checkpoint.
    """
    from detkit.engine.trainer import Trainer

    ckpt = load_checkpoint(checkpoint)
    overrides = list(overrides or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    cfg = config_from_dict(ckpt["config"], overrides)
    check_resumable(ckpt, cfg.to_dict(), checkpoint)
    try:
        trainer = Trainer(cfg, run_dir=Path(checkpoint).parent)
        check_classes(ckpt["class_names"], trainer.class_names, checkpoint)
        trainer.load(ckpt)
        return trainer.fit()
    finally:
        ddp.cleanup()


def resume_or_start(cfg: Config, overrides: list[str] | None = None) -> Path | None:
    """``--resume auto``: continue ``<project>/<name>/last.pt`` when it exists, else start the
    run in that folder. The same command can then be relaunched as often as needed (torchrun
    ``--max-restarts``, a requeued SLURM job, a restarted Kubernetes pod): every launch goes on
    where the last checkpoint left off, in the same folder.

    Args:
        cfg: the run's config (from ``--config`` and the overrides); its ``name`` must be set.
        overrides: the command's ``key=value`` overrides, applied to the checkpoint's config
            when resuming.

    Returns:
        The run folder (None on DDP ranks other than 0).

    Raises:
        ResumeError: ``name`` is empty (each launch would pick a new folder), or the checkpoint
            cannot continue (see :func:`resume`).
    """
    from detkit.engine.trainer import train

    t = cfg.train
    if not t.name:
        raise ResumeError(
            "--resume auto needs a fixed name=... (e.g. name=exp): every launch must find the "
            "same run folder"
        )
    run_dir = Path(t.project) / t.name
    last = run_dir / "last.pt"
    if last.exists():
        log.info("--resume auto: continuing from %s", last)
        return resume(last, overrides)
    log.info("--resume auto: no %s yet; starting the run there", last)
    run_dir.mkdir(parents=True, exist_ok=True)  # a launch that died early may have made it
    return train(cfg, run_dir=run_dir)
