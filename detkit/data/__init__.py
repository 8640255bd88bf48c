"""Data: readers, the synthetic shapes dataset, letterbox/augmentation, dataset and loader.

Names are imported lazily (as in ``detkit``), so ``import detkit.data.types`` does not pull in
albumentations or pycocotools, and ``python -m detkit.data.synthetic`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detkit.data.coco import CocoDataset, read_image, write_coco
    from detkit.data.dataset import (
        Batch,
        DetectionDataset,
        EpochBatchSampler,
        build_loader,
        collate,
        images_to_float,
        seed_worker,
        set_loader_epoch,
    )
    from detkit.data.synthetic import (
        SHAPES_CLASSES,
        default_shapes_root,
        ensure_shapes,
        generate_shapes,
        render_scene,
        shapes_split,
    )
    from detkit.data.transforms import (
        DetectionTransform,
        build_transforms,
        letterbox_image,
        letterbox_info,
    )
    from detkit.data.types import LetterboxInfo, Sample

_LAZY = {
    "CocoDataset": "coco",
    "read_image": "coco",
    "write_coco": "coco",
    "Batch": "dataset",
    "DetectionDataset": "dataset",
    "build_loader": "dataset",
    "collate": "dataset",
    "images_to_float": "dataset",
    "seed_worker": "dataset",
    "EpochBatchSampler": "dataset",
    "set_loader_epoch": "dataset",
    "SHAPES_CLASSES": "synthetic",
    "default_shapes_root": "synthetic",
    "ensure_shapes": "synthetic",
    "generate_shapes": "synthetic",
    "render_scene": "synthetic",
    "shapes_split": "synthetic",
    "DetectionTransform": "transforms",
    "build_transforms": "transforms",
    "letterbox_image": "transforms",
    "letterbox_info": "transforms",
    "LetterboxInfo": "types",
    "Sample": "types",
}

__all__ = [
    "SHAPES_CLASSES",
    "Batch",
    "CocoDataset",
    "DetectionDataset",
    "DetectionTransform",
    "EpochBatchSampler",
    "LetterboxInfo",
    "Sample",
    "build_loader",
    "build_transforms",
    "collate",
    "default_shapes_root",
    "ensure_shapes",
    "generate_shapes",
    "images_to_float",
    "letterbox_image",
    "letterbox_info",
    "read_image",
    "render_scene",
    "seed_worker",
    "set_loader_epoch",
    "shapes_split",
    "write_coco",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'detkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"detkit.data.{_LAZY[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
