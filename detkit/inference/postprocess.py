"""The one post-processor: decoded (boxes xyxy input px, c, p) -> c·p -> threshold -> class-aware
NMS -> the best ``max_det`` per image -> orig px. Validation, evaluation, inference and explain all
run it, so what is measured is what users get."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from detkit.boxes import box_iou
from detkit.boxes.suppression import _grouped_nms_sorted
from detkit.core.deploy import EVAL
from detkit.core.protocols import DetectionModel
from detkit.data import LetterboxInfo
from detkit.data.types import to_orig_batch

PRE_NMS_TOPK = 3000
"""(box, class) candidates per image entering NMS, the best by c·p: bounds NMS time at a low
``conf``. The ONNX NMS graph applies the same cap."""


class Result(NamedTuple):
    """One image's detections, by decreasing score (ties: lower prior row, then lower class)."""

    boxes: Tensor  # [K, 4] xyxy input px (orig px out of ``detect`` given ``infos``)
    scores: Tensor  # [K] c·p
    labels: Tensor  # [K] int64


class Trace(NamedTuple):
    """What NMS did in one image; rows index the priors.

    ``kept`` [K]: the prior row of each detection. Per removed candidate, by decreasing score:
    ``suppressed`` [S] its prior row, ``labels`` [S], ``scores`` [S] c·p, ``by`` [S] the first
    kept detection (same class unless ``agnostic``) with IoU ``> iou``, ``iou`` [S] float64.
    Candidates whose remover ``max_det`` dropped, or beyond ``PRE_NMS_TOPK``, are left out.
    """

    kept: Tensor
    suppressed: Tensor
    labels: Tensor
    scores: Tensor
    by: Tensor
    iou: Tensor


def postprocess(
    boxes: Tensor,
    objectness: Tensor,
    class_probs: Tensor,
    conf: float = EVAL.conf,
    iou: float = EVAL.iou,
    max_det: int = EVAL.max_det,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    trace: bool = False,
) -> list[Result] | list[tuple[Result, Trace]]:
    """Score ``boxes [B, N, 4]`` (xyxy input px) with c·p (``objectness [B, N]`` in [0, 1],
    ``class_probs [B, N, C]``), keep pairs ``> conf`` of ``classes`` (the best
    ``PRE_NMS_TOPK``), run class-aware (``agnostic``: across classes) greedy NMS (IoU ``> iou``
    suppresses, in float64) and keep ``max_det``. One :class:`Result` per image; with
    ``trace``, one ``(Result, Trace)``."""
    scores = objectness[..., None] * class_probs  # c·p, [B, N, C]
    if classes is not None:
        wanted = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        wanted[torch.as_tensor(list(classes), dtype=torch.long, device=wanted.device)] = True
        scores = scores * wanted
    out: list = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        prior, label = torch.nonzero(image_scores > conf, as_tuple=True)
        cand = image_scores[prior, label]
        order = torch.sort(cand, descending=True, stable=True).indices[:PRE_NMS_TOPK]
        prior, label, cand = prior[order], label[order], cand[order]
        cand_boxes, groups = image_boxes[prior], label * (not agnostic)
        kept = _grouped_nms_sorted(cand_boxes, groups, iou) if len(cand) else order
        keep = kept[:max_det]
        result = Result(cand_boxes[keep], cand[keep], label[keep])
        if trace:
            gone, by, ious = _removed(cand_boxes.double(), groups, kept, max_det, iou)
            result = (result, Trace(prior[keep], prior[gone], label[gone], cand[gone], by, ious))
        out.append(result)
    return out


def _removed(
    boxes: Tensor, groups: Tensor, kept: Tensor, max_det: int, iou: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Removed candidates' positions, their remover (index into ``kept[:max_det]``) and IoU."""
    gone = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    gone[kept] = False
    gone = gone.nonzero()[:, 0]
    if not len(kept):  # no candidates at all
        return gone, gone, boxes.new_zeros(0)
    ious = box_iou(boxes[gone], boxes[kept])  # [S, K]
    hit = (ious > iou) & (groups[gone, None] == groups[kept][None]) & (kept < gone[:, None])
    by = hit.byte().argmax(1)  # the first kept box, in score order, that removes each
    ok = hit.any(1) & (by < max_det)
    return gone[ok], by[ok], ious[ok, by[ok]]


def detect(
    model: DetectionModel,
    images: Tensor,
    priors: Tensor,
    conf: float = EVAL.conf,
    iou: float = EVAL.iou,
    max_det: int = EVAL.max_det,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    infos: Sequence[LetterboxInfo] | None = None,
    times: dict[str, float] | None = None,
    amp: torch.dtype | None = None,
    raw: Tensor | None = None,
) -> list[Result]:
    """Forward (skipped when the caller gives its output ``raw``; autocast to ``amp``), the
    model's decode, :func:`postprocess` and, given each image's letterbox ``infos``, xyxy orig
    px clipped to the image. ``images [B, 3, H, W]`` float in [0, 1], ``priors`` the model's for
    ``H x W``. An NMS graph answers ``model.detections``; ``conf``, ``classes``, ``max_det``
    filter what it kept. ``times`` receives ``inference`` and ``postprocess`` seconds (the
    device synced at each)."""
    sync = times is not None and images.device.type == "cuda"
    if sync:  # the copy to the device is not the forward's time
        torch.cuda.synchronize(images.device)
    start = time.perf_counter()
    nms_in_graph = getattr(model, "nms_in_graph", False)
    if nms_in_graph:
        found = model.detections(images)
    elif raw is None:
        with torch.autocast(images.device.type, dtype=amp) if amp else nullcontext():
            raw = model(images)
    if sync:
        torch.cuda.synchronize(images.device)
    mid = time.perf_counter()
    if nms_in_graph:
        out = [_filter(r, conf, classes, max_det) for r in found]
    else:
        out = postprocess(*model.decode(raw, priors), conf, iou, max_det, classes, agnostic)
    if infos is not None:
        if len(out) != len(infos):
            raise ValueError(f"{len(out)} images but {len(infos)} letterbox maps")
        orig = to_orig_batch(list(infos), [r.boxes.float() for r in out])
        out = [Result(b, r.scores, r.labels) for b, r in zip(orig, out, strict=True)]
    if times is not None:
        if sync:
            torch.cuda.synchronize(images.device)
        times |= {"inference": mid - start, "postprocess": time.perf_counter() - mid}
    return out


def _filter(
    result: tuple[Tensor, Tensor, Tensor], conf: float, classes: Sequence[int] | None, max_det: int
) -> Result:
    """Apply a higher threshold, a class subset and a smaller ``max_det`` to NMS-graph output."""
    boxes, scores, labels = result
    keep = scores > conf
    if classes is not None:
        keep &= torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype))
    return Result(boxes[keep][:max_det], scores[keep][:max_det], labels[keep][:max_det])
