"""Inference: a checkpoint in, :class:`Detections` in original-image pixels out.

``Detector.detect_batch`` is the path shared with evaluation: preprocessed batch -> model ->
:func:`detkit.postprocess.detect` (model decode, c·p, NMS) -> boxes mapped back through each
image's letterbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from detkit.data import LetterboxInfo, images_to_float, letterbox_image
from detkit.engine.device import select_device
from detkit.postprocess import detect
from detkit.visualize import draw_detections


@dataclass
class Detections:
    """Detections of one image, sorted by decreasing score.

    Attributes:
        boxes: ``[K, 4]`` float32 xyxy, original-image px.
        scores: ``[K]`` class-specific confidence c·p.
        labels: ``[K]`` int64 contiguous class indices.
        class_names: names indexed by label.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.numel())

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[int(i)] for i in self.labels]

    def to_numpy(self) -> dict[str, np.ndarray]:
        """``{"boxes": [K,4] float32, "scores": [K] float32, "labels": [K] int64}``."""
        return {
            "boxes": self.boxes.detach().cpu().float().numpy(),
            "scores": self.scores.detach().cpu().float().numpy(),
            "labels": self.labels.detach().cpu().long().numpy(),
        }

    def to_coco(self, image_id: int, cat_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries: bbox xywh (top-left) in original px, category ids mapped back.

        Args:
            image_id: the COCO image id.
            cat_ids: contiguous label -> dataset category id; identity when None.
        """
        d = self.to_numpy()
        xywh = d["boxes"].copy()
        xywh[:, 2:] -= xywh[:, :2]
        return [
            {
                "image_id": int(image_id),
                "category_id": int(cat_ids[lab] if cat_ids is not None else lab),
                "bbox": [round(float(v), 3) for v in box],
                "score": round(float(s), 5),
            }
            for box, s, lab in zip(xywh, d["scores"], d["labels"], strict=True)
        ]

    def draw(self, image: np.ndarray | str | Path) -> np.ndarray:
        """A copy of ``image`` (array in any channel order, or a path read as BGR) with boxes."""
        if isinstance(image, str | Path):
            image = _read_bgr(image)
        d = self.to_numpy()
        return draw_detections(image, d["boxes"], d["scores"], d["labels"], self.class_names)

    def __repr__(self) -> str:
        lines = [f"Detections({len(self)} objects)"]
        for name, s, b in zip(
            self.names[:10], self.scores.tolist(), self.boxes.tolist(), strict=False
        ):
            lines.append(f"  {name:<12} {s:.3f}  [{', '.join(f'{v:.1f}' for v in b)}]")
        if len(self) > 10:
            lines.append(f"  ... {len(self) - 10} more")
        return "\n".join(lines)


def _read_bgr(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


def _to_rgb(image: Any, rgb: bool) -> np.ndarray:
    """A path, a numpy array (BGR unless ``rgb``) or a PIL image -> H x W x 3 uint8 RGB."""
    if isinstance(image, str | Path):
        return cv2.cvtColor(_read_bgr(image), cv2.COLOR_BGR2RGB)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, numpy array or PIL image, got {type(image).__name__}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
    image = image[..., :3]
    return np.ascontiguousarray(image if rgb else image[..., ::-1])


class Detector:
    """A trained detector behind one call: ``Detector.from_checkpoint(path).predict(image)``.

    Args:
        model: a detector returning raw ``[B, N, 5 + C]`` with a ``priors(h, w, device)`` method.
        class_names: names by contiguous label.
        img_size: square network input size (letterboxed).
        conf, iou, max_det: post-processing defaults (see :func:`detkit.postprocess.postprocess`).
        cat_ids: contiguous label -> dataset category id, for :meth:`Detections.to_coco`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: list[str],
        img_size: int,
        conf: float = 0.25,
        iou: float = 0.6,
        max_det: int = 300,
        cat_ids: list[int] | None = None,
    ) -> None:
        self.model = model.eval()
        self.class_names = list(class_names)
        self.img_size = img_size
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.cat_ids = cat_ids
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "", **overrides: Any) -> Detector:
        """Load ``best.pt``/``last.pt`` (EMA weights when present) onto ``device``."""
        from detkit.build import build_model
        from detkit.config import config_from_dict
        from detkit.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt["config"])
        model = build_model(cfg.model, len(ckpt["class_names"]))
        model.load_state_dict(ckpt.get("ema") or ckpt["model"])
        model.to(select_device(device))
        kwargs: dict[str, Any] = {
            "img_size": cfg.train.img_size,
            "conf": 0.25,
            "iou": cfg.eval.iou,
            "max_det": cfg.eval.max_det,
            "cat_ids": ckpt.get("cat_ids"),
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model, ckpt["class_names"], **kwargs)

    def priors(self, height: int, width: int) -> torch.Tensor:
        """Grid priors for an input size, cached per size and device."""
        key = (height, width)
        if key not in self._priors or self._priors[key].device != self.device:
            self._priors[key] = self.model.priors(height, width, device=self.device)
        return self._priors[key]

    @torch.inference_mode()
    def detect_batch(
        self,
        images: torch.Tensor,
        infos: Sequence[LetterboxInfo],
        conf: float | None = None,
    ) -> list[Detections]:
        """Detect on a preprocessed batch.

        Args:
            images: ``[B, 3, S, S]`` uint8 (or float in [0, 1]) letterboxed input.
            infos: each image's letterbox, to map boxes back to original px.
            conf: score threshold for this call (default ``self.conf``).
        """
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images_to_float(images)
        priors = self.priors(images.shape[2], images.shape[3])
        threshold = self.conf if conf is None else conf
        results = detect(self.model, images, priors, threshold, self.iou, self.max_det)
        out = []
        for (boxes, scores, labels), info in zip(results, infos, strict=True):
            out.append(Detections(info.to_orig(boxes).float(), scores, labels, self.class_names))
        return out

    def predict(
        self, images: Any, rgb: bool = False, conf: float | None = None
    ) -> Detections | list[Detections]:
        """Detect objects in one image or a list of them.

        Args:
            images: a path, a numpy array (BGR as OpenCV reads it, or RGB with ``rgb=True``),
                a PIL image, or a list of these (run as one batch).
            rgb: numpy arrays are RGB rather than BGR.
            conf: score threshold for this call.

        Returns:
            :class:`Detections` in original-image px; a list when given a list.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        if not items:
            return []
        prepared = [letterbox_image(_to_rgb(im, rgb), self.img_size) for im in items]
        batch = torch.from_numpy(np.stack([im for im, _ in prepared])).permute(0, 3, 1, 2)
        dets = self.detect_batch(batch, [info for _, info in prepared], conf=conf)
        return dets[0] if single else dets
