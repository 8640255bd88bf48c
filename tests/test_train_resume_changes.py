"""A resume applies every setting it accepts as changed, or refuses it.

``--resume ... lr=0.01`` used to be logged and saved while the optimizer kept the checkpoint's
LR (its param groups came back from the saved state). Here a run resumed with every accepted
key changed builds exactly what a fresh run of the changed config builds: optimizer settings,
LR schedule, loss, loaders and augmentation, EMA, loop options (everything but the state a
checkpoint carries), and the schedule continues where the epochs done put it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detkit.api import build_trainer, resume, train
from detkit.config import config_from_dict, idle_keys, load_config
from detkit.data import generate_shapes
from detkit.engine.optim import schedule_position
from detkit.engine.resume import CRITERION_WEIGHTS, KEPT, ResumeError, flatten
from detkit.engine.trainer import Trainer
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after its first epoch (16 images, batch 4: 4 updates an epoch)."""
    base = tmp_path_factory.mktemp("changes")
    root = generate_shapes(base / "shapes", num_train=16, num_val=4, seed=5)
    cfg = load_config(overrides=[
        f"root={root}", "num_train=16", "num_val=4", "epochs=3", "batch=4", "img_size=64",
        "workers=0", "quiet=true", "device=cpu", "model.widths=[8,16,16,16,16]",
        "model.neck_width=16", f"project={base}", "name=r", "plots=false", "max_steps=4",
        "optimizer=sgd",
    ])  # fmt: skip
    return train(cfg)


def _changed(key: str, value: Any, root: Path) -> Any:
    """Another valid value for ``key`` (the run's own is ``value``); a key whose values are
    names needs its own entry in ``special`` (a new config key fails here until it has one)."""
    special = {
        "data.format": "coco",  # the shapes folder read as the COCO set it is
        "data.root": str(root.parent / "copy"),
        "data.train_ann": "annotations/train_copy.json",
        "data.val_ann": "annotations/val_copy.json",
        "data.train_images": "images/train_copy",
        "data.val_images": "images/val_copy",
        "data.class_names": ["circle", "square", "triangle", "star"],
        "data.aug_scale": [0.5, 1.5],
        "data.variant": "hard",
        "data.cache_dir": str(root.parent / "cache"),
        "train.device": "",
        "train.schedule": "linear",
        "train.batch": 2,
        "train.max_steps": 100,
        "train.tensorboard": False,
        "train.amp_dtype": "bf16",
        "eval.split": "train",
        "eval.errors": "0.5:0.95",
    }
    if key in special:
        return special[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.1
    if isinstance(value, list):
        return [f"{v}_x" for v in value]  # VOC splits: unused by this dataset
    return f"{value}_x"  # e.g. yolo_yaml: unused by this dataset


def _accepted(ckpt: dict) -> dict[str, Any]:
    """Every config key a resume accepts as changed, with another value; but not those that do
    nothing once all are changed (another format's, eval_every under val=false): such a key is
    refused (#22)."""
    root = Path(ckpt["config"]["data"]["root"])
    saved = config_from_dict(ckpt["config"]).to_dict()
    out = {}
    for key, value in flatten(saved).items():
        if key.startswith("model.") and key not in CRITERION_WEIGHTS:
            continue
        if key in KEPT or key == "train.img_size":
            continue
        out[key] = _changed(key, value, root)
    changed = {s: {**v, **{k.split(".")[1]: out[k] for k in out if k.startswith(f"{s}.")}}
               for s, v in saved.items()}  # fmt: skip
    idle = idle_keys(config_from_dict(changed))
    return {k: v for k, v in out.items() if k not in idle}


def _plain(obj: Any, depth: int = 0) -> Any:
    """The settings an object holds, as plain comparable data."""
    if depth > 4 or obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Tensor | np.ndarray):
        return np.asarray(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj).tolist()
    if isinstance(obj, list | tuple):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj):
        return _plain(dataclasses.asdict(obj), depth + 1)
    if isinstance(obj, torch.nn.Module | torch.optim.Optimizer) or callable(obj):
        return type(obj).__name__
    if hasattr(obj, "__dict__"):
        return {k: _plain(v, depth + 1) for k, v in vars(obj).items() if not k.startswith("_")}
    return type(obj).__name__


def _built(trainer: Trainer) -> dict[str, Any]:
    """What a config builds and a checkpoint does not restore."""
    sched = trainer.scheduler
    loaders = {}
    for name in ("train_loader", "val_loader"):
        loader = getattr(trainer, name)
        data = loader.dataset
        loaders[name] = {
            "sampler": _plain(loader.batch_sampler), "workers": loader.num_workers,
            "seed": data.seed, "transform": _plain(data.transform), "cached": data.cache is not None,
            "split": (data.source.class_names, len(data.source), str(data.source.images_root),
                      data.source.max_pixels, data.source.min_image_side),
        }  # fmt: skip
    return {
        "optimizer": type(trainer.optimizer).__name__,
        "groups": [
            {k: v for k, v in g.items() if k not in ("params", "lr")}
            for g in trainer.optimizer.param_groups
        ],
        "base_lrs": list(sched.base_lrs),
        "schedule": [f(u) for f in sched.lr_lambdas for u in range(0, 40)],
        "criterion": _plain(trainer.criterion),
        "loaders": loaders,
        "opts": dataclasses.asdict(trainer.opts),
        "ema_decay": trainer.ema.decay,
        "accumulate": trainer.opts.accumulate,
        "amp": str(trainer.opts.amp),
        "deploy": trainer.deploy.to_dict(),
    }


def _resumed(last: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> Trainer:
    """The trainer ``resume`` builds and loads, just before it would train."""
    monkeypatch.setattr(Trainer, "fit", lambda self: self)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    steps = [] if any(o.startswith("train.max_steps=") for o in overrides) else ["max_steps=0"]
    return resume(last, [*steps, *overrides])


def _copy_dataset(root: Path) -> None:
    """The dataset again under other names: ``copy/``, and in it ``*_copy`` files."""
    copy = root.parent / "copy"
    shutil.copytree(root, copy, dirs_exist_ok=True)
    for split in ("train", "val"):
        shutil.copyfile(copy / f"annotations/instances_{split}.json",
                        copy / f"annotations/{split}_copy.json")  # fmt: skip
        if not (copy / f"images/{split}_copy").exists():
            (copy / f"images/{split}_copy").symlink_to(copy / f"images/{split}")


def test_every_accepted_change_is_built_as_a_fresh_run_builds_it(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = tmp_path / "r" / "last.pt"
    shutil.copytree(run, last.parent)
    ckpt = load_checkpoint(last)
    _copy_dataset(Path(ckpt["config"]["data"]["root"]))
    changes = _accepted(ckpt)
    assert len(changes) > 60 and "train.lr" in changes and "train.momentum" in changes
    overrides = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in changes.items()]
    resumed = _resumed(last, overrides, monkeypatch)
    cfg = config_from_dict(ckpt["config"], overrides)
    assert all(flatten(cfg.to_dict())[k] == v for k, v in changes.items())  # each one changed
    fresh = build_trainer(cfg, run_dir=tmp_path / "fresh")
    built, expected = _built(resumed), _built(fresh)
    for part in expected:
        assert built[part] == expected[part], part
    # and the schedule goes on after the epoch done, in the changed run's terms
    per_epoch = math.ceil(len(resumed.train_loader) / resumed.opts.accumulate)
    position = schedule_position(1, 0, per_epoch, resumed.opts.accumulate)
    assert resumed.scheduler.last_epoch == position == per_epoch
    factor = resumed.scheduler.lr_lambdas[0](position)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [
        b * factor for b in resumed.scheduler.base_lrs
    ]


@pytest.mark.parametrize(
    ("key", "value", "group_key"),
    [("lr", 0.01, "initial_lr"), ("weight_decay", 0.01, "weight_decay"),
     ("momentum", 0.8, "momentum"), ("nesterov", "false", "nesterov")],
)  # fmt: skip
def test_the_optimizer_takes_the_resumed_settings(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: Any,
    group_key: str,
) -> None:  # fmt: skip
    last = tmp_path / "r" / "last.pt"
    shutil.copytree(run, last.parent)
    trainer = _resumed(last, [f"{key}={value}"], monkeypatch)
    group = trainer.optimizer.param_groups[0]  # the decayed weights
    assert group[group_key] == (value if value != "false" else False)
    if key == "lr":
        factor = trainer.scheduler.lr_lambdas[0](trainer.scheduler.last_epoch)
        assert group["lr"] == 0.01 * factor and trainer.scheduler.base_lrs == [0.01, 0.01]
    assert trainer.optimizer.state  # the moments came back


def test_a_new_batch_size_continues_the_schedule_after_the_epochs_done(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = tmp_path / "r" / "last.pt"
    shutil.copytree(run, last.parent)
    assert load_checkpoint(last)["scheduler"]["last_epoch"] == 4  # epoch 1 of 4 updates
    trainer = _resumed(last, ["batch=2"], monkeypatch)  # 8 updates an epoch now
    assert trainer.scheduler.last_epoch == 8


def test_what_a_resume_cannot_apply_is_refused_and_changes_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = tmp_path / "r" / "last.pt"
    shutil.copytree(run, last.parent)
    before = sorted(p.name for p in last.parent.iterdir())
    for change, why in [("optimizer=adamw", "moments are the other optimizer's"),
                        ("name=other", "continues in its own folder"),
                        ("project=elsewhere", "continues in its own folder"),
                        ("exist_ok=true", "continues in its own folder")]:  # fmt: skip
        with pytest.raises(ResumeError, match=why):
            resume(last, [change])
    # a refusal found once everything is built (here: weights of another shape) renames no
    # config.yaml and writes nothing
    ckpt = load_checkpoint(last)
    ckpt["model"] = {k: v[..., :1] if v.ndim else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, last)
    with pytest.raises(Exception, match="do not fit"):
        resume(last, ["lr=0.01", "max_steps=0"])
    assert sorted(p.name for p in last.parent.iterdir()) == before
