"""Data: readers, the synthetic shapes dataset, letterbox/augmentation, dataset and loader."""

from __future__ import annotations

from detkit.data.coco import CocoDataset, read_image, write_coco
from detkit.data.dataset import (
    Batch,
    DetectionDataset,
    build_loader,
    collate,
    images_to_float,
    seed_worker,
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

__all__ = [
    "SHAPES_CLASSES",
    "Batch",
    "CocoDataset",
    "DetectionDataset",
    "DetectionTransform",
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
    "shapes_split",
    "write_coco",
]
