"""Decoded predictions -> scored, NMS-filtered detections. The one post-processing path.

Every model turns its raw output into the same three tensors with its ``decode(raw, priors)``
method (boxes through its box coder, objectness c, class probabilities p); :func:`postprocess`
then scores with c·p and runs class-aware NMS. The trainer's evaluation, ``tools/eval.py``,
``tools/infer.py`` and :class:`detkit.Detector` all call :func:`detect`, so what is measured is
what users get.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from detkit.boxes import batched_multiclass_nms

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

PRE_NMS_TOPK = 3000
"""Candidates (box, class) per image entering NMS: the best by c·p, ties by box then class
index. An untrained model at conf 0.001 passes every one of its N * C pairs (10,500 for yolo_n
at 320 px with 5 classes) and NMS then cost 100x a trained model's; 10 x ``max_det`` left the
detections of trained models unchanged where measured (docs/architecture.md). The ONNX NMS
graph applies the same cap."""


def postprocess(
    boxes: torch.Tensor,
    objectness: torch.Tensor,
    class_probs: torch.Tensor,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
) -> list[Result]:
    """Score with c·p, threshold, keep the best ``PRE_NMS_TOPK`` and run class-aware (or
    class-agnostic) NMS per image.

    Args:
        boxes: ``[B, N, 4]`` xyxy input px.
        objectness: ``[B, N]`` confidence c in [0, 1].
        class_probs: ``[B, N, C]`` class probabilities p.
        conf: minimum class-specific confidence c·p.
        iou: NMS IoU threshold.
        max_det: detections kept per image.
        classes: keep only these labels; the others are removed before NMS and ``max_det``
            (their p is zeroed, so c·p never passes the threshold).
        agnostic: suppress across classes, so a box keeps only its best label.

    Returns:
        One ``(boxes [K, 4] xyxy input px, scores [K], labels [K] int64)`` per image, sorted by
        decreasing score.
    """
    if classes is not None:
        keep = torch.zeros(
            class_probs.shape[-1], dtype=class_probs.dtype, device=class_probs.device
        )
        keep[torch.as_tensor(list(classes), dtype=torch.long, device=keep.device)] = 1
        class_probs = class_probs * keep
    return batched_multiclass_nms(
        boxes,
        objectness,
        class_probs,
        score_threshold=conf,
        iou_threshold=iou,
        max_det=max_det,
        class_agnostic=agnostic,
        pre_nms_topk=PRE_NMS_TOPK,
    )


def detect(
    model: nn.Module,
    images: torch.Tensor,
    priors: torch.Tensor,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    times: dict[str, float] | None = None,
    amp: torch.dtype | None = None,
) -> list[Result]:
    """Forward, the model's own decode, then :func:`postprocess`.

    Args:
        model: a detector with ``forward(images) -> raw`` and ``decode(raw, priors)``.
        images: ``[B, 3, H, W]`` float in [0, 1].
        priors: the model's priors for ``H x W``.
        times: when given, receives the seconds of ``inference`` (the forward) and
            ``postprocess`` (decode, c·p, NMS), the device synchronised at each boundary so
            that queued GPU work is counted where it belongs.
        amp: the forward runs under autocast with this dtype (None: as it is); the decodes
            cast the raw output to float32, so scoring and NMS never see half precision.
    """
    start = synced_clock(images, times)
    with torch.autocast(images.device.type, dtype=amp) if amp is not None else nullcontext():
        raw = model(images)
    mid = synced_clock(images, times)
    out = postprocess(
        *model.decode(raw, priors),
        conf=conf,
        iou=iou,
        max_det=max_det,
        classes=classes,
        agnostic=agnostic,
    )
    if times is not None:
        times["inference"] = mid - start
        times["postprocess"] = synced_clock(images, times) - mid
    return out


def synced_clock(tensor: torch.Tensor, timing: object = True) -> float:
    """``time.perf_counter()``, after the tensor's device finished its queued work when
    ``timing`` is not None (a CUDA sync); no synchronisation otherwise."""
    if timing is not None and tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)
    return time.perf_counter()
