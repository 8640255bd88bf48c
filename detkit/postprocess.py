"""Decoded predictions -> scored, NMS-filtered detections. The one post-processing path.

Every model turns its raw output into the same three tensors with its ``decode(raw, priors)``
method (boxes through its box coder, objectness c, class probabilities p); :func:`postprocess`
then scores with c·p and runs class-aware NMS. The trainer's evaluation, ``tools/eval.py``,
``tools/infer.py`` and :class:`detkit.Detector` all call :func:`detect`, so what is measured is
what users get.
"""

from __future__ import annotations

import torch
from torch import nn

from detkit.boxes import batched_multiclass_nms

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def postprocess(
    boxes: torch.Tensor,
    objectness: torch.Tensor,
    class_probs: torch.Tensor,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
) -> list[Result]:
    """Score with c·p, threshold and run class-aware NMS per image.

    Args:
        boxes: ``[B, N, 4]`` xyxy input px.
        objectness: ``[B, N]`` confidence c in [0, 1].
        class_probs: ``[B, N, C]`` class probabilities p.
        conf: minimum class-specific confidence c·p.
        iou: NMS IoU threshold.
        max_det: detections kept per image.

    Returns:
        One ``(boxes [K, 4] xyxy input px, scores [K], labels [K] int64)`` per image, sorted by
        decreasing score.
    """
    return batched_multiclass_nms(
        boxes, objectness, class_probs, score_threshold=conf, iou_threshold=iou, max_det=max_det
    )


def detect(
    model: nn.Module,
    images: torch.Tensor,
    priors: torch.Tensor,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
) -> list[Result]:
    """Forward, the model's own decode, then :func:`postprocess`.

    Args:
        model: a detector with ``forward(images) -> raw`` and ``decode(raw, priors)``.
        images: ``[B, 3, H, W]`` float in [0, 1].
        priors: the model's priors for ``H x W``.
    """
    raw = model(images)
    return postprocess(*model.decode(raw, priors), conf=conf, iou=iou, max_det=max_det)
