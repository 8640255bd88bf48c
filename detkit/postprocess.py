"""Raw grid predictions -> scored, NMS-filtered detections. The one decode path.

The trainer's evaluation, ``tools/eval.py``, ``tools/infer.py``, the ONNX graph and
:class:`detkit.Detector` all call :func:`decode` and :func:`postprocess`, so what is measured is
what users get.
"""

from __future__ import annotations

import torch

from detkit.boxes import batched_multiclass_nms
from detkit.coder import GridCoder

_CODER = GridCoder()


def decode(
    raw: torch.Tensor, priors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn raw head output into boxes, confidences and class probabilities.

    Args:
        raw: ``[B, N, 5 + C]`` from :class:`detkit.models.yolo.GridDetector`.
        priors: ``[N, 5]`` grid priors of the same input size.

    Returns:
        boxes ``[B, N, 4]`` xyxy input px, objectness ``[B, N]`` in (0, 1) (the c of c·p),
        class probabilities ``[B, N, C]`` (softmax, the p of c·p).
    """
    raw = raw.float()
    deltas = torch.cat([raw[..., :2].sigmoid(), raw[..., 2:4]], dim=-1)
    boxes = _CODER.decode(deltas, priors)
    return boxes, raw[..., 4].sigmoid(), raw[..., 5:].softmax(dim=-1)


def postprocess(
    raw: torch.Tensor,
    priors: torch.Tensor,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode, score with c·p, threshold and run class-aware NMS per image.

    Args:
        raw: ``[B, N, 5 + C]`` raw predictions.
        priors: ``[N, 5]`` grid priors.
        conf: minimum class-specific confidence c·p.
        iou: NMS IoU threshold.
        max_det: detections kept per image.

    Returns:
        One ``(boxes [K, 4] xyxy input px, scores [K], labels [K] int64)`` per image, sorted by
        decreasing score.
    """
    boxes, obj, probs = decode(raw, priors)
    return batched_multiclass_nms(
        boxes, obj, probs, score_threshold=conf, iou_threshold=iou, max_det=max_det
    )
