"""The one place where config becomes objects: datasets, model, loss, optimiser."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detkit.config import Config, DataConfig, ModelConfig, TrainConfig
from detkit.data import CocoDataset, ensure_shapes
from detkit.losses import YOLOLoss
from detkit.models.yolo import GridDetector

MODELS = {"yolo": GridDetector}


def build_model(cfg: ModelConfig, num_classes: int) -> GridDetector:
    """A detector for ``num_classes`` classes from its config section."""
    if cfg.arch not in MODELS:
        raise ValueError(f"model.arch {cfg.arch!r} unknown; choose one of {', '.join(MODELS)}")
    return MODELS[cfg.arch](
        num_classes=num_classes,
        widths=cfg.widths,
        strides=cfg.strides,
        anchors=cfg.anchors,
        neck_width=cfg.neck_width,
    )


def build_loss(cfg: TrainConfig, model: GridDetector) -> YOLOLoss:
    """The criterion matching ``model``'s levels and the weights in ``cfg``."""
    return YOLOLoss(
        num_classes=model.num_classes,
        strides=model.strides,
        anchors=model.anchors,
        box_weight=cfg.box_weight,
        obj_weight=cfg.obj_weight,
        cls_weight=cfg.cls_weight,
        beta=cfg.smooth_l1_beta,
    )


def dataset_root(cfg: DataConfig) -> Path:
    """The dataset folder; for the built-in set, generated on first use."""
    if cfg.format == "shapes":
        root = Path(cfg.root) if cfg.root else None
        return ensure_shapes(
            root, num_train=cfg.num_train, num_val=cfg.num_val, seed=cfg.synth_seed
        )
    if cfg.format == "coco":
        if not cfg.root:
            raise ValueError("data.root is empty: point it at the dataset folder (root=/path)")
        return Path(cfg.root)
    raise ValueError(f"data.format {cfg.format!r} unknown; choose shapes or coco")


def build_dataset(cfg: DataConfig, split: str) -> CocoDataset:
    """The ``train`` or ``val`` split as a :class:`CocoDataset`."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = dataset_root(cfg)
    ann, images = (
        (cfg.train_ann, cfg.train_images) if split == "train" else (cfg.val_ann, cfg.val_images)
    )
    return CocoDataset(root / ann, root / images)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only, never on norm layers and biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, nn.Conv2d | nn.Linear)
            (decay if is_weight else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    raise ValueError(f"train.optimizer {cfg.optimizer!r} unknown; choose sgd or adamw")


def build_all(cfg: Config) -> tuple[CocoDataset, CocoDataset, GridDetector]:
    """Train and val datasets and a model sized to their classes."""
    train_set, val_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    return train_set, val_set, build_model(cfg.model, len(train_set.class_names))
