"""Inference: a checkpoint (or an exported ONNX file) in, :class:`Detections` in original px out.

``Detector.detect_batch`` is the path shared with evaluation: preprocessed batch -> model ->
:func:`detkit.postprocess.detect` (model decode, c·p, NMS) -> boxes mapped back through each
image's letterbox. An ONNX file runs through the same function (its graph holds the decode; see
:class:`detkit.export.OnnxModel`), unless it was exported with NMS in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
        orig_shape: ``(height, width)`` of the original image in px, when known.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] = field(default_factory=list)
    orig_shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.scores.numel())

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[int(i)] for i in self.labels]

    def to_numpy(self) -> dict[str, np.ndarray]:
        """``{"boxes": [K,4] float32 xyxy orig px, "scores": [K] float32, "labels": [K] int64}``."""
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

    def to_yolo(self, with_scores: bool = True) -> list[str]:
        """YOLO txt lines ``label cx cy w h [score]``, centre format normalised by the image size.

        Raises:
            ValueError: ``orig_shape`` is unknown.
        """
        if self.orig_shape is None:
            raise ValueError("to_yolo needs the image size; these detections have no orig_shape")
        h, w = self.orig_shape
        d = self.to_numpy()
        b = d["boxes"].astype(np.float64)
        cxcywh = np.stack(
            [
                (b[:, 0] + b[:, 2]) / 2 / w,
                (b[:, 1] + b[:, 3]) / 2 / h,
                (b[:, 2] - b[:, 0]) / w,
                (b[:, 3] - b[:, 1]) / h,
            ],
            axis=1,
        )
        lines = []
        for lab, row, s in zip(d["labels"], cxcywh, d["scores"], strict=True):
            line = f"{int(lab)} " + " ".join(f"{v:.6f}" for v in row)
            lines.append(line + (f" {float(s):.5f}" if with_scores else ""))
        return lines

    def crops(self, image: np.ndarray) -> list[np.ndarray]:
        """The image region of each detection (integer px, at least 1 x 1), as copies.

        Args:
            image: the original ``H x W x C`` image the detections refer to.
        """
        h, w = image.shape[:2]
        out = []
        for x1, y1, x2, y2 in self.to_numpy()["boxes"]:
            left, top = min(int(np.floor(x1)), w - 1), min(int(np.floor(y1)), h - 1)
            right, bottom = max(int(np.ceil(x2)), left + 1), max(int(np.ceil(y2)), top + 1)
            out.append(image[max(top, 0) : bottom, max(left, 0) : right].copy())
        return out

    def draw(self, image: np.ndarray | str | Path) -> np.ndarray:
        """A copy of ``image`` (array in any channel order, or a path read as BGR) with boxes."""
        if isinstance(image, str | Path):
            image = _read_bgr(image)
        d = self.to_numpy()
        return draw_detections(image, d["boxes"], d["scores"], d["labels"], self.class_names)

    def __repr__(self) -> str:
        size = f", {self.orig_shape[1]}x{self.orig_shape[0]} px" if self.orig_shape else ""
        lines = [f"Detections({len(self)} objects{size})"]
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


def to_rgb(image: Any, rgb: bool = False) -> np.ndarray:
    """A path, a numpy array (BGR unless ``rgb``) or a PIL image -> H x W x 3 uint8 RGB.

    Grey images are expanded to three channels and an alpha channel is dropped.
    """
    if isinstance(image, str | Path):
        return cv2.cvtColor(_read_bgr(image), cv2.COLOR_BGR2RGB)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, numpy array or PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
    image = image[..., :3]
    return np.ascontiguousarray(image if rgb else image[..., ::-1])


def load_model(path: str | Path, device: str = "") -> tuple[torch.nn.Module, dict, Any]:
    """Build the model of a checkpoint with its weights (EMA when present) on ``device``.

    The checkpoint holds every weight, so a ``backbone_weights`` file named in its config is not
    read (it need not exist where the model is deployed).

    Returns:
        ``(model in eval mode, the checkpoint dict, its Config)``.
    """
    from detkit.build import build_model
    from detkit.config import config_from_dict
    from detkit.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(replace(cfg.model, backbone_weights=""), len(ckpt["class_names"]))
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    return model.to(select_device(device)).eval(), ckpt, cfg


class Detector:
    """A trained detector behind one call: ``Detector.from_checkpoint(path).predict(image)``.

    Args:
        model: a detector with ``forward``, ``priors(h, w, device)`` and ``decode(raw, priors)``,
            or a :class:`detkit.export.OnnxModel`.
        class_names: names by contiguous label.
        img_size: square network input size (letterboxed).
        conf, iou, max_det: post-processing defaults (see :func:`detkit.postprocess.postprocess`).
        cat_ids: contiguous label -> dataset category id, for :meth:`Detections.to_coco`.
    """

    def __init__(
        self,
        model: Any,
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
        if isinstance(self.model, torch.nn.Module):
            return next(self.model.parameters()).device
        return self.model.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "", **overrides: Any) -> Detector:
        """Load ``best.pt``/``last.pt`` (EMA weights when present), or an ``.onnx`` export.

        Args:
            path: a detkit checkpoint, or a file written by :func:`detkit.export.export_onnx`
                (then see :meth:`from_onnx`).
            device: ``""`` (CUDA when present), ``"cpu"``, ``"cuda:N"``.
            **overrides: ``conf``, ``iou``, ``max_det``, ``img_size``, ``cat_ids`` (None values
                are ignored).
        """
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=device or "cpu", **overrides)
        model, ckpt, cfg = load_model(path, device)
        kwargs: dict[str, Any] = {
            "img_size": cfg.train.img_size,
            "conf": 0.25,
            "iou": cfg.eval.iou,
            "max_det": cfg.eval.max_det,
            "cat_ids": ckpt.get("cat_ids"),
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model, ckpt["class_names"], **kwargs)

    @classmethod
    def from_onnx(cls, path: str | Path, device: str = "cpu", **overrides: Any) -> Detector:
        """Run an exported ``.onnx`` with onnxruntime through the same API.

        The input size is the export's. A graph with NMS inside fixes ``iou`` and the lowest
        ``conf``; asking for a lower ``conf``, another ``iou`` or a larger ``max_det`` raises.
        """
        from detkit.export import OnnxModel

        model = OnnxModel(path, device=device)
        meta = model.meta
        kwargs: dict[str, Any] = {
            "img_size": model.img_size,
            "conf": meta["conf"] if model.nms_in_graph else 0.25,
            "iou": meta["iou"] if model.nms_in_graph else 0.6,
            "max_det": meta["max_det"] if model.nms_in_graph else 300,
            "cat_ids": meta.get("cat_ids"),
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if kwargs["img_size"] != model.img_size:
            raise ValueError(f"{path} was exported for img_size {model.img_size}")
        det = cls(model, model.class_names, **kwargs)
        det._check_graph_limits(det.conf)
        return det

    def _check_graph_limits(self, conf: float) -> None:
        """Refuse settings an NMS graph cannot honour (it has already applied its own)."""
        if not getattr(self.model, "nms_in_graph", False):
            return
        meta = self.model.meta
        if conf < meta["conf"] or self.iou != meta["iou"] or self.max_det > meta["max_det"]:
            raise ValueError(
                f"{self.model.path} has NMS in the graph with conf {meta['conf']}, iou "
                f"{meta['iou']}, max_det {meta['max_det']}; got conf {conf}, iou {self.iou}, "
                f"max_det {self.max_det}. Export again with other values, or without --nms"
            )

    def priors(self, height: int, width: int) -> torch.Tensor:
        """Model priors for an input size, cached per size and device."""
        key = (height, width)
        if key not in self._priors or self._priors[key].device != self.device:
            self._priors[key] = self.model.priors(height, width, device=self.device)
        return self._priors[key]

    def _check_classes(self, classes: Sequence[int] | None) -> list[int] | None:
        if classes is None:
            return None
        out = [int(c) for c in classes]
        bad = [c for c in out if not 0 <= c < len(self.class_names)]
        if bad:
            raise ValueError(f"class indices {bad} out of range 0..{len(self.class_names) - 1}")
        return out

    @torch.inference_mode()
    def detect_batch(
        self,
        images: torch.Tensor,
        infos: Sequence[LetterboxInfo],
        conf: float | None = None,
        classes: Sequence[int] | None = None,
    ) -> list[Detections]:
        """Detect on a preprocessed batch.

        Args:
            images: ``[B, 3, S, S]`` uint8 (or float in [0, 1]) letterboxed input.
            infos: each image's letterbox, to map boxes back to original px.
            conf: score threshold for this call (default ``self.conf``).
            classes: keep only these labels (filtered before NMS and ``max_det``).

        Returns:
            One :class:`Detections` per image, boxes xyxy orig px.
        """
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images_to_float(images)
        threshold = self.conf if conf is None else conf
        classes = self._check_classes(classes)
        if getattr(self.model, "nms_in_graph", False):
            self._check_graph_limits(threshold)
            results = [
                _filter(r, threshold, classes, self.max_det) for r in self.model.detections(images)
            ]
        else:
            priors = self.priors(images.shape[2], images.shape[3])
            results = detect(
                self.model, images, priors, threshold, self.iou, self.max_det, classes=classes
            )
        out = []
        for (boxes, scores, labels), info in zip(results, infos, strict=True):
            out.append(
                Detections(
                    info.to_orig(boxes).float(),
                    scores,
                    labels,
                    self.class_names,
                    (info.orig_h, info.orig_w),
                )
            )
        return out

    def predict(
        self,
        images: Any,
        rgb: bool = False,
        conf: float | None = None,
        classes: Sequence[int] | None = None,
    ) -> Detections | list[Detections]:
        """Detect objects in one image or a list of them.

        Args:
            images: a path, a numpy array (BGR as OpenCV reads it, or RGB with ``rgb=True``),
                a PIL image, or a list of these (run as one batch; sizes may differ).
            rgb: numpy arrays are RGB rather than BGR.
            conf: score threshold for this call.
            classes: keep only these labels.

        Returns:
            :class:`Detections` in original-image px; a list when given a list.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        if not items:
            return []
        prepared = [letterbox_image(to_rgb(im, rgb), self.img_size) for im in items]
        batch = torch.from_numpy(np.stack([im for im, _ in prepared])).permute(0, 3, 1, 2)
        dets = self.detect_batch(batch, [info for _, info in prepared], conf=conf, classes=classes)
        return dets[0] if single else dets

    def __repr__(self) -> str:
        kind = type(self.model).__name__
        return (
            f"Detector({kind}, {len(self.class_names)} classes, img_size={self.img_size}, "
            f"conf={self.conf}, iou={self.iou}, max_det={self.max_det}, device={self.device})"
        )


def _filter(
    result: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    conf: float,
    classes: list[int] | None,
    max_det: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply a higher threshold, a class subset and a smaller ``max_det`` to NMS-graph output."""
    boxes, scores, labels = result
    keep = scores > conf
    if classes is not None:
        keep &= torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    return boxes[keep][:max_det], scores[keep][:max_det], labels[keep][:max_det]
