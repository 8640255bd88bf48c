"""Run-time checkable protocols of what the layers above need of a model and of a dataset split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # typing only: this module stays importable without torch
    import torch

    from detkit.data.types import Sample


@runtime_checkable
class DetectionModel(Protocol):
    """A detector (:class:`detkit.models.yolo.GridDetector`, ``YOLO``, ``SSD``) of
    ``num_classes`` C, with the feature levels' ``strides``, finest first."""

    num_classes: int
    strides: list[int]

    # how :meth:`priors` rows read: ``"grid"`` ``(gx, gy, stride, anchor_w, anchor_h)``, or
    # ``"ssd"`` ``(cx, cy, w, h)`` input px
    prior_format: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float in [0, 1] -> raw ``[B, N, 5 + C]`` (loss and decode input)."""

    def priors(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """The priors (grid cells or default boxes) of an ``H x W`` input."""

    def decode(self, raw: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw output -> ``(boxes [B, N, 4] xyxy input px, objectness c [B, N], class
        probabilities p [B, N, C])``."""

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """``(h, w)`` of each level's feature map for an ``H x W`` input."""


@runtime_checkable
class DetectionSplit(Protocol):
    """A checked dataset split (:class:`detkit.data.source.DetectionSource`: COCO, VOC, YOLO):
    ``class_names`` and ``cat_ids`` (the dataset's category id) by contiguous label, each item's
    ground-truth ``image_ids``, and the ``report`` of the checks."""

    class_names: list[str]
    cat_ids: list[int]
    image_ids: list[int]
    report: Any

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample:
        """Item ``index``: the RGB image and its boxes (xyxy, original px) and labels."""
