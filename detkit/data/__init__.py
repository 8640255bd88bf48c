"""Data: readers (COCO, VOC, YOLO) and their checks, writers and conversion, the synthetic
shapes dataset, letterbox/augmentation (mosaic included), dataset, RAM cache and loader.

Names are imported lazily (as in ``detkit``), so ``import detkit.data.types`` does not pull in
albumentations or pycocotools, and ``python -m detkit.data.synthetic`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detkit.data.cache import ImageCache
    from detkit.data.check import DataError, DataReport, data_report, format_report
    from detkit.data.coco import CocoDataset
    from detkit.data.convert import convert_dataset
    from detkit.data.dataset import DetectionDataset
    from detkit.data.groundtruth import ground_truth, ground_truth_file, write_coco
    from detkit.data.images import probe_image, read_image
    from detkit.data.loader import (
        Batch,
        EpochBatchSampler,
        build_loader,
        collate,
        images_to_float,
        seed_worker,
        set_loader_epoch,
    )
    from detkit.data.source import DetectionSource
    from detkit.data.synthetic import (
        SHAPES_CLASSES,
        default_shapes_root,
        ensure_shapes,
        generate_shapes,
        render_scene,
        shapes_split,
    )
    from detkit.data.transforms import (
        Augment,
        DetectionTransform,
        build_transforms,
        letterbox_image,
        letterbox_info,
    )
    from detkit.data.types import LetterboxInfo, Sample
    from detkit.data.voc import VOC_CLASSES, VocDataset
    from detkit.data.yolo import YoloDataset

_LAZY = {
    "ImageCache": "cache",
    "DataError": "check",
    "DataReport": "check",
    "data_report": "check",
    "format_report": "check",
    "CocoDataset": "coco",
    "write_coco": "groundtruth",
    "convert_dataset": "convert",
    "ground_truth": "groundtruth",
    "ground_truth_file": "groundtruth",
    "probe_image": "images",
    "read_image": "images",
    "DetectionSource": "source",
    "Batch": "loader",
    "DetectionDataset": "dataset",
    "build_loader": "loader",
    "collate": "loader",
    "images_to_float": "loader",
    "seed_worker": "loader",
    "EpochBatchSampler": "loader",
    "set_loader_epoch": "loader",
    "SHAPES_CLASSES": "synthetic",
    "default_shapes_root": "synthetic",
    "ensure_shapes": "synthetic",
    "generate_shapes": "synthetic",
    "render_scene": "synthetic",
    "shapes_split": "synthetic",
    "Augment": "transforms",
    "DetectionTransform": "transforms",
    "build_transforms": "transforms",
    "letterbox_image": "transforms",
    "letterbox_info": "transforms",
    "LetterboxInfo": "types",
    "Sample": "types",
    "VOC_CLASSES": "voc",
    "VocDataset": "voc",
    "YoloDataset": "yolo",
}

__all__ = [
    "SHAPES_CLASSES",
    "VOC_CLASSES",
    "Augment",
    "Batch",
    "CocoDataset",
    "DataError",
    "DataReport",
    "DetectionDataset",
    "DetectionSource",
    "DetectionTransform",
    "EpochBatchSampler",
    "ImageCache",
    "LetterboxInfo",
    "Sample",
    "VocDataset",
    "YoloDataset",
    "build_loader",
    "build_transforms",
    "collate",
    "convert_dataset",
    "data_report",
    "default_shapes_root",
    "ensure_shapes",
    "format_report",
    "generate_shapes",
    "ground_truth",
    "ground_truth_file",
    "images_to_float",
    "letterbox_image",
    "letterbox_info",
    "probe_image",
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
