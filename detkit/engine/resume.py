"""What a resume from ``last.pt`` may change: :data:`OPERATIONAL` keys freely, other training
keys with a warning; the model, image size, classes and :data:`KEPT` keys not."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detkit.engine.distributed import DistContext

log = logging.getLogger(__name__)

# fields that change how the run is driven, never what a step computes
OPERATIONAL = frozenset({
    "epochs", "max_steps", "patience", "device", "workers", "quiet", "eval_every", "save_every",
    "tensorboard", "mlflow", "plots", "max_nonfinite", "cache_images", "cache_dir",
    "dist_timeout", "val_batch",
})  # fmt: skip


# model fields a resume applies (the criterion is rebuilt); every other model field is the run's
CRITERION_WEIGHTS = frozenset(
    {"model.box_weight", "model.obj_weight", "model.cls_weight", "model.box_beta"}
)

# fields a resume cannot apply, refused with the reason
KEPT = {
    "train.optimizer": " (the saved moments are the other optimizer's)",
    "train.project": " (a resumed run continues in its own folder)",
    "train.name": " (a resumed run continues in its own folder)",
    "train.exist_ok": " (a resumed run continues in its own folder)",
    "train.weights": " (a resumed run continues from its own weights)",
    "train.freeze": " (the saved optimizer state is that of the other trainable weights)",
}


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
    accepted changes that make it differ from one never stopped. ``saved``: the checkpoint's
    config, today's defaults filled in.

    Raises:
        ResumeError: the model, image size (mid-epoch: batch) differ, or the run is finished.
    """
    changes = config_changes(saved, new_config)
    mid_epoch = ckpt.get("batch_in_epoch", 0) > 0
    fixed = {"train.img_size", *KEPT} | (
        {"train.batch", "train.nominal_batch"} if mid_epoch else set()
    )
    model = [c for c in changes if c[0].startswith("model.") and c[0] not in CRITERION_WEIGHTS]
    wrong = model + [c for c in changes if c[0] in fixed]
    if wrong:
        lines = "\n".join(
            f"  {k}: {a!r} in the checkpoint, {b!r} now{KEPT.get(k, '')}" for k, a, b in wrong
        )
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
    if epoch >= epochs and ckpt.get("val_pending") is None:  # else its validation is to run
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
    how = [
        f"{k} the dataset: {', '.join(v)}" for k, v in (("not in", missing), ("new in", new)) if v
    ]
    how = how or ["the same names in another order (labels would swap)"]
    raise ResumeError(
        f"cannot resume {path}: the dataset's classes differ from the checkpoint's\n"
        f"  checkpoint: {list(saved)}\n  dataset:    {list(current)}\n  {'; '.join(how)}"
    )


def world_history(
    ckpt: dict[str, Any], world_size: int, batch: int, accumulate: int, batches: int
) -> tuple[list[list[int]], str]:
    """The run's ``[step, processes]`` history with this resume added, and a note on what a
    change of the number of processes means ("" when unchanged); ``batches``: per epoch now."""
    saved = int(ckpt.get("world_size", 1))
    history = [list(w) for w in ckpt.get("world") or [[0, saved]]]
    if saved == world_size:
        return history, ""
    history.append([int(ckpt["step"]), world_size])
    before = ckpt.get("data", {}).get("batches")
    note = (
        f"resuming a run saved by {saved} process(es) on {world_size}: the global batch stays "
        f"{batch} ({batch // world_size} images per process, {batch // saved} before), and lr, "
        f"warmup, EMA and the accumulation ({accumulate} batch(es) per update) are per global "
        f"batch, so they are unchanged; epoch {ckpt['epoch'] + 1} goes on at global batch "
        f"{ckpt.get('batch_in_epoch', 0)} of the same order. Batch-norm statistics now come "
        f"from {batch // world_size} images per process, so the run will differ from one "
        "never stopped"
    )
    if before is not None and before != batches:
        note += (
            f"; an epoch has {batches} batches now, {before} before (the shares are padded "
            "differently), and the lr schedule's length follows the new count"
        )
    return history, note


def check_same_start(epoch: int, step: int, ctx: DistContext, path: str | Path) -> None:
    """Refuse, on every rank at once, ranks that resumed different points of a run (a node
    read an older, node-local copy); a collective, after loading.

    Raises:
        ResumeError: the ranks' ``(epoch, step)`` differ (each listed).
    """
    from detkit.engine.distributed import all_gather

    points = all_gather((int(epoch), int(step)), ctx)
    if len(set(points)) > 1:
        where = ", ".join(f"rank {r}: epoch {e} step {s}" for r, (e, s) in enumerate(points))
        raise ResumeError(
            f"the ranks resumed different points of {path} ({where}): each node read its own "
            "copy of the file. Give every node the same run folder (project= on a shared "
            "filesystem), or use --resume auto, where rank 0 reads it for all"
        )
