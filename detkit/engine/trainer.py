"""The training loop: data -> model -> loss -> step -> EMA, evaluated and checkpointed each epoch.

``train(cfg)`` is what ``tools/train.py`` and ``detkit.train`` call. It writes a run folder
``<project>/<name>/`` holding ``config.yaml``, ``metrics.csv``, ``last.pt`` and ``best.pt``
(both written atomically; best by COCO mAP50-95 of the EMA weights).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import detkit
from detkit.build import build_dataset, build_loss, build_model, build_optimizer
from detkit.config import Config, config_from_dict, save_config
from detkit.data import (
    CocoDataset,
    DetectionDataset,
    build_loader,
    build_transforms,
    images_to_float,
    set_loader_epoch,
)
from detkit.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from detkit.engine.device import amp_dtype, autocast, select_device
from detkit.engine.optim import ModelEMA, warmup_cosine
from detkit.eval import evaluate
from detkit.predict import Detector

log = logging.getLogger(__name__)


def next_run_dir(project: str | Path, name: str = "") -> Path:
    """``project/name``, or the first free ``exp``, ``exp2``, ... when ``name`` is empty.

    An existing named folder is never reused, so a new run cannot overwrite an old one's
    checkpoints: ``name`` gets a numeric suffix instead.
    """
    project = Path(project)
    base = name or "exp"
    for i in range(1, 10_000):
        candidate = project / (base if i == 1 else f"{base}{i}")
        if not candidate.exists():
            candidate.mkdir(parents=True)
            return candidate
    raise RuntimeError(f"no free run folder under {project}")


@dataclass
class TrainState:
    """Everything that changes during training and must survive a resume."""

    epoch: int = 0
    step: int = 0
    best_map: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _loaders(cfg: Config, train_set: CocoDataset, val_set: CocoDataset, pin: bool):
    t = cfg.train
    train_ds = DetectionDataset(train_set, build_transforms(t.img_size, train=True, hflip=t.hflip))
    val_ds = DetectionDataset(val_set, build_transforms(t.img_size, train=False))
    train_loader = build_loader(
        train_ds, t.batch, train=True, workers=t.workers, seed=t.seed, pin_memory=pin
    )
    val_loader = build_loader(
        val_ds, t.batch, train=False, workers=t.workers, seed=t.seed, pin_memory=pin
    )
    return train_loader, val_loader


class Trainer:
    """Owns the objects of one run; :meth:`fit` is the loop.

    Args:
        cfg: the resolved run config.
        run_dir: where outputs go (created by :func:`next_run_dir` when None).
    """

    def __init__(self, cfg: Config, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        t = cfg.train
        torch.manual_seed(t.seed)
        self.device = select_device(t.device)
        self.train_set = build_dataset(cfg.data, "train")
        self.val_set = build_dataset(cfg.data, "val")
        self.class_names = self.train_set.class_names
        self.model = build_model(cfg.model, len(self.class_names)).to(self.device)
        self.criterion = build_loss(t, self.model)
        self.optimizer = build_optimizer(t, self.model)
        self.ema = ModelEMA(self.model, t.ema_decay)
        self.amp = amp_dtype(self.device, t.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        pin = self.device.type == "cuda"
        self.train_loader, self.val_loader = _loaders(cfg, self.train_set, self.val_set, pin)
        steps_per_epoch = len(self.train_loader)
        self.total_steps = t.epochs * steps_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        warmup = min(round(t.warmup_epochs * steps_per_epoch), self.total_steps // 2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, self.total_steps, warmup)
        )
        self.state = TrainState()
        self.run_dir = run_dir or next_run_dir(t.project, t.name)
        save_config(cfg, self.run_dir / "config.yaml")

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train to the configured number of epochs; return the run folder."""
        t = self.cfg.train
        log.info(
            "training on %s: %d train / %d val images, %d classes, run folder %s",
            self.device,
            len(self.train_set),
            len(self.val_set),
            len(self.class_names),
            self.run_dir,
        )
        while self.state.epoch < t.epochs and self.state.step < self.total_steps:
            losses = self.train_one_epoch()
            self.state.epoch += 1
            last = self.state.epoch == t.epochs or self.state.step >= self.total_steps
            metrics = self.validate() if last or self.state.epoch % t.eval_every == 0 else {}
            self.end_epoch(losses, metrics)
        return self.run_dir

    def train_one_epoch(self) -> dict[str, float]:
        """One pass over the training loader; returns the mean loss parts."""
        self.model.train()
        t, sums, seen, steps = self.cfg.train, {"box": 0.0, "obj": 0.0, "cls": 0.0}, 0, 0
        set_loader_epoch(self.train_loader, self.state.epoch)
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.state.epoch + 1}/{t.epochs}",
            disable=t.quiet,
            unit="batch",
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        for batch in bar:
            if self.state.step >= self.total_steps:
                break
            parts = self.train_step(batch)
            for k in sums:
                sums[k] += parts[k]
            seen, steps = seen + batch.images.shape[0], steps + 1
            speed = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(
                {k: f"{v / steps:.3f}" for k, v in sums.items()}
                | {"lr": f"{self.scheduler.get_last_lr()[0]:.2e}", "img/s": f"{speed:.0f}"}
            )
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, loss, backward, clipped optimiser step, EMA update, LR step."""
        images = images_to_float(batch.images.to(self.device, non_blocking=True))
        targets = batch.targets.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            raw = self.model(images)
        h, w = images.shape[2:]
        priors = self.model.priors(h, w, device=self.device)
        loss, parts = self.criterion(raw, targets, priors, self.model.feature_sizes(h, w))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite loss {parts} at step {self.state.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        self.state.step += 1
        return parts

    def detector(self, conf: float | None = None) -> Detector:
        """The EMA model behind the shared inference path."""
        e = self.cfg.eval
        return Detector(
            self.ema.module,
            self.class_names,
            self.cfg.train.img_size,
            conf=e.conf if conf is None else conf,
            iou=e.iou,
            max_det=e.max_det,
            cat_ids=self.train_set.cat_ids,
        )

    def validate(self) -> dict[str, float]:
        """COCO metrics of the EMA weights on the validation split."""
        result = evaluate(
            self.detector(),
            self.val_loader,
            self.val_set.ann_file,
            progress=not self.cfg.train.quiet,
        )
        return result.stats

    # -- bookkeeping ----------------------------------------------------------------------
    def end_epoch(self, losses: dict[str, float], metrics: dict[str, float]) -> None:
        """Append to metrics.csv, save last.pt, and best.pt when mAP50-95 improved."""
        row = {
            "epoch": self.state.epoch,
            "step": self.state.step,
            "lr": self.scheduler.get_last_lr()[0],
            **losses,
            "mAP50-95": metrics.get("mAP50-95", float("nan")),
            "mAP50": metrics.get("mAP50", float("nan")),
        }
        self.state.history.append(row)
        self._write_csv()
        improved = bool(metrics) and metrics["mAP50-95"] > self.state.best_map
        if improved:
            self.state.best_map = metrics["mAP50-95"]
        state = self.checkpoint()
        save_checkpoint(state, self.run_dir / "last.pt")
        if improved:
            save_checkpoint(state, self.run_dir / "best.pt")
        if metrics and not self.cfg.train.quiet:
            tqdm.write(
                f"epoch {self.state.epoch}: mAP50-95 {metrics['mAP50-95']:.4f}  "
                f"mAP50 {metrics['mAP50']:.4f}  (best {self.state.best_map:.4f})"
            )

    def _write_csv(self) -> None:
        path = self.run_dir / "metrics.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.state.history[0]))
            writer.writeheader()
            for row in self.state.history:
                writer.writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                )

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to resume or deploy, as plain tensors and Python data."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_map": self.state.best_map,
            "history": self.state.history,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "class_names": list(self.class_names),
            "cat_ids": [int(c) for c in self.train_set.cat_ids],
            "version": detkit.__version__,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore a :meth:`checkpoint` (resume at the next epoch)."""
        if list(ckpt["class_names"]) != list(self.class_names):
            raise ValueError(
                f"checkpoint classes {ckpt['class_names']} differ from the dataset's "
                f"{self.class_names}"
            )
        self.model.load_state_dict(ckpt["model"])
        self.ema.module.load_state_dict(ckpt["ema"])
        self.ema.updates = int(ckpt["ema_updates"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(
            ckpt["epoch"], ckpt["step"], ckpt["best_map"], list(ckpt["history"])
        )
        set_rng_state(ckpt["rng"])


def train(cfg: Config) -> Path:
    """Train a detector as ``cfg`` says; returns the run folder."""
    return Trainer(cfg).fit()


def resume(checkpoint: str | Path, epochs: int | None = None) -> Path:
    """Continue the run that wrote ``checkpoint`` (its ``last.pt``) in the same folder.

    Args:
        checkpoint: path to ``last.pt``.
        epochs: a new total epoch count, to extend a finished run.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    if epochs is not None:
        cfg.train.epochs = epochs
    if ckpt["epoch"] >= cfg.train.epochs:
        raise ValueError(
            f"{checkpoint} finished at epoch {ckpt['epoch']} of {cfg.train.epochs}; "
            "pass epochs=N with N larger to extend it"
        )
    trainer = Trainer(cfg, run_dir=Path(checkpoint).parent)
    trainer.load(ckpt)
    return trainer.fit()
