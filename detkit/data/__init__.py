"""Data: readers (COCO, VOC, YOLO) and their checks, writers and conversion, the synthetic
shapes, letterbox and augmentation, dataset, RAM cache and loader. Names are imported lazily (as
in ``detkit``), so ``import detkit.data.types`` pulls in neither albumentations nor pycocotools."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {  # module -> the names it lends the package
    "cache": "ImageCache",
    "check": "DataError DataReport data_report format_report",
    "coco": "CocoDataset",
    "convert": "convert_dataset",
    "dataset": "DetectionDataset",
    "groundtruth": "ground_truth ground_truth_file write_coco",
    "images": "probe_image read_image",
    "loader": "Batch EpochBatchSampler build_loader collate images_to_float seed_worker "
    "set_loader_epoch",
    "source": "DetectionSource",
    "synthetic": "SHAPES_CLASSES default_shapes_root ensure_shapes generate_shapes render_scene "
    "shapes_split",
    "transforms": "Augment DetectionTransform build_transforms letterbox_image letterbox_info",
    "types": "LetterboxInfo Sample",
    "voc": "VOC_CLASSES VocDataset",
    "yolo": "YoloDataset",
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names.split()}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'detkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"detkit.data.{_LAZY[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
