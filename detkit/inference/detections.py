"""``Detections``: one image's result and its writers. ``labels`` are contiguous ``0..C-1`` (YOLO
files), ``category_ids`` the dataset's ids (COCO results); each writer uses its format's."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from detkit.boxes.coords import box_convert
from detkit.core.versions import require
from detkit.core.visualize import draw_detections, save_image
from detkit.data.images import read_image
from detkit.data.yolo import yolo_rows

if TYPE_CHECKING:
    import supervision as sv

    from detkit.data.types import ImageLike


@dataclass
class Detections:
    """Detections of one image, sorted by decreasing score: ``boxes [K, 4]`` float32 xyxy
    original-image px, ``scores [K]`` c·p, ``labels [K]`` int64 contiguous; ``orig_shape``
    ``(height, width)`` px when known; ``cat_ids`` label -> dataset category id (None: the
    labels are the ids); ``image`` (``H x W x 3`` uint8 RGB) and ``speed`` (ms per image of
    ``preprocess``, ``inference``, ``postprocess``) set by ``Detector.predict``. Indexing (an
    int, a slice, a bool mask or an index tensor) gives a ``Detections`` of those rows;
    iterating, one per object."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] = field(default_factory=list)
    orig_shape: tuple[int, int] | None = None
    cat_ids: list[int] | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    speed: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def xyxy(self) -> torch.Tensor:
        """``[K, 4]`` xyxy orig px: :attr:`boxes` under Ultralytics' name."""
        return self.boxes

    @property
    def conf(self) -> torch.Tensor:
        """``[K]`` c·p: :attr:`scores` under Ultralytics' name."""
        return self.scores

    @property
    def cls(self) -> torch.Tensor:
        """``[K]`` contiguous labels ``0..C-1``: :attr:`labels` under Ultralytics' name."""
        return self.labels

    def __len__(self) -> int:
        return int(self.scores.numel())

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> Detections:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"detection {index} out of range for {len(self)} detections")
            index = slice(index % len(self), index % len(self) + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index)
            if index.dtype != torch.bool:
                index = index.long()
        return replace(
            self, boxes=self.boxes[index], scores=self.scores[index], labels=self.labels[index]
        )

    def __iter__(self) -> Iterator[Detections]:
        return (self[i] for i in range(len(self)))

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[int(i)] for i in self.labels]

    @property
    def category_ids(self) -> torch.Tensor:
        """``[K]`` int64 dataset category id of each detection (the label when no map is known)."""
        if self.cat_ids is None:
            return self.labels.long().cpu()
        table = torch.as_tensor(self.cat_ids, dtype=torch.long)
        return table[self.labels.long().cpu()]

    def to_numpy(self) -> dict[str, np.ndarray]:
        """``{"boxes": [K,4] float32 xyxy orig px, "scores": [K] float32, "labels": [K] int64}``."""
        return {
            "boxes": self.boxes.detach().cpu().float().numpy(),
            "scores": self.scores.detach().cpu().float().numpy(),
            "labels": self.labels.detach().cpu().long().numpy(),
        }

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per detection: ``box`` xyxy orig px, ``score``, ``class``, ``class_id``,
        ``category_id``."""
        return [
            {
                "box": [round(v, 2) for v in b],
                "score": round(s, 4),
                "class": n,
                "class_id": int(c),
                "category_id": int(k),
            }
            for b, s, n, c, k in zip(
                self.boxes.tolist(),
                self.scores.tolist(),
                self.names,
                self.labels.tolist(),
                self.category_ids.tolist(),
                strict=True,
            )
        ]

    def to_df(self) -> Any:
        """A ``pandas.DataFrame``: ``class``, ``class_id``, ``category_id``, ``score`` and
        ``x1 y1 x2 y2`` (float32 orig px), unrounded (``ImportError`` without pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Detections.to_df() needs pandas: pip install pandas") from None
        d = self.to_numpy()
        table = {
            "class": self.names,
            "class_id": d["labels"],
            "category_id": self.category_ids.numpy(),
            "score": d["scores"],
        }
        table |= {k: d["boxes"][:, i] for i, k in enumerate(("x1", "y1", "x2", "y2"))}
        return pd.DataFrame(table)

    def to_supervision(self) -> Any:
        """A ``supervision.Detections``: ``xyxy`` float32 orig px, ``confidence`` c·p,
        ``class_id`` the labels, ``data["class_name"]`` and ``data["category_id"]``
        (``MissingPackage`` without supervision)."""
        sv = require("supervision", "Detections.to_supervision()", "pip install supervision")
        d = self.to_numpy()
        return sv.Detections(
            xyxy=d["boxes"], confidence=d["scores"], class_id=d["labels"],
            data={"class_name": np.array(self.names, dtype=str),
                  "category_id": self.category_ids.numpy()},
        )  # fmt: skip

    @classmethod
    def from_supervision(
        cls, detections: sv.Detections, class_names: Sequence[str] | None = None,
        orig_shape: tuple[int, int] | None = None, cat_ids: list[int] | None = None,
    ) -> Detections:  # fmt: skip
        """Detections from a ``supervision.Detections`` (``xyxy`` orig px, ``class_id``,
        ``confidence``: missing, 1), sorted by decreasing score; ``class_names`` default from
        ``data["class_name"]`` (else the number). ``ValueError``: no ``class_id``, or a label
        without a name."""
        if detections.class_id is None:
            raise ValueError("from_supervision needs class ids: the detections have no class_id")
        labels = torch.as_tensor(np.asarray(detections.class_id, dtype=np.int64))
        n = len(labels)
        conf = detections.confidence
        scores = torch.ones(n) if conf is None else torch.as_tensor(np.asarray(conf, np.float32))
        boxes = torch.as_tensor(np.asarray(detections.xyxy, np.float32).reshape(-1, 4))
        if class_names is None:
            class_names = _names_by_label(labels.tolist(), detections.data.get("class_name"))
        if n and int(labels.max()) >= len(class_names):
            raise ValueError(f"class id {int(labels.max())} has no name in {list(class_names)}")
        order = torch.argsort(scores, descending=True, stable=True)
        return cls(boxes[order], scores[order], labels[order], list(class_names), orig_shape,
                   cat_ids)  # fmt: skip

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_records` as a JSON string."""
        return json.dumps(self.to_records(), indent=indent)

    def to_coco(self, image_id: int, cat_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries: bbox xywh (top-left) in original px, category ids by
        ``cat_ids`` (label -> id; default :attr:`category_ids`)."""
        d = self.to_numpy()
        xywh = box_convert(d["boxes"], "xyxy", "xywh")
        cats = (
            [int(cat_ids[lab]) for lab in d["labels"]]
            if cat_ids is not None
            else self.category_ids.tolist()
        )
        return [
            {
                "image_id": int(image_id),
                "category_id": int(cat),
                "bbox": [round(float(v), 3) for v in box],
                "score": round(float(s), 5),
            }
            for box, s, cat in zip(xywh, d["scores"], cats, strict=True)
        ]

    def to_yolo(self, with_scores: bool = False) -> list[str]:
        """YOLO txt lines ``label cx cy w h [score]``, normalised by the image size (without
        scores, usable as training labels); ``ValueError`` without ``orig_shape``."""
        if self.orig_shape is None:
            raise ValueError("to_yolo needs the image size; these detections have no orig_shape")
        d = self.to_numpy()
        scores = d["scores"] if with_scores else None
        return yolo_rows(d["boxes"], d["labels"], *self.orig_shape, scores).splitlines()

    def crops(self, image: np.ndarray | None = None) -> list[np.ndarray]:
        """Copies of each detection's region (integer px, at least 1 x 1) of ``image`` (default:
        the one ``predict`` kept, RGB)."""
        image = self._image(image, "crops")
        h, w = image.shape[:2]
        out = []
        for x1, y1, x2, y2 in self.to_numpy()["boxes"]:
            left, top = min(int(np.floor(x1)), w - 1), min(int(np.floor(y1)), h - 1)
            right, bottom = max(int(np.ceil(x2)), left + 1), max(int(np.ceil(y2)), top + 1)
            out.append(image[max(top, 0) : bottom, max(left, 0) : right].copy())
        return out

    def draw(self, image: ImageLike) -> np.ndarray:
        """A copy of ``image`` with boxes, names and scores drawn: a numpy array (colours follow
        its channel order), a path (read and returned as BGR, as OpenCV reads it) or a PIL image
        (returned as an RGB array)."""
        if isinstance(image, str | Path):
            image = np.ascontiguousarray(read_image(image, None)[..., ::-1])
        elif hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
            image = np.asarray(image.convert("RGB"))
        elif not isinstance(image, np.ndarray):
            raise TypeError(f"expected a path, numpy array or PIL image, got {type(image)}")
        d = self.to_numpy()
        return draw_detections(image, d["boxes"], d["scores"], d["labels"], self.class_names)

    def plot(self) -> np.ndarray:
        """The annotated image as ``H x W x 3`` uint8 RGB (the image ``predict`` was given;
        ``ValueError`` when none was kept, e.g. ``Detector.detect_batch``: use :meth:`draw`)."""
        return self.draw(self._image(None, "plot"))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`plot` to ``path`` (format from its suffix, folders created); returns it."""
        return save_image(path, self.plot())

    def _image(self, image: np.ndarray | None, what: str) -> np.ndarray:
        if image is not None:
            return image
        if self.image is None:
            raise ValueError(
                f"{what}() needs the image: these detections were made without keeping it "
                "(Detector.predict keeps it); pass the image instead, e.g. draw(image)"
            )
        return self.image

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


def _names_by_label(labels: list[int], names: Sequence[str] | None) -> list[str]:
    """Class names by label from per-detection names (a label without one: its number).

    Example:
        >>> _names_by_label([2, 0], ["star", "circle"])
        ['circle', '1', 'star']
    """
    found = dict(zip(labels, names if names is not None else [], strict=False))
    return [str(found.get(k, k)) for k in range(max(labels, default=-1) + 1)]
