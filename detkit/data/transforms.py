"""Letterbox (longest side to ``S``, grey pad bottom/right: input px -> orig px is a pure scale,
``LetterboxInfo``) and, in training, albumentations' random steps after it (xyxy px boxes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from detkit.data.augment import PAD_VALUE, Augment, augmentation_compose, moves_boxes
from detkit.data.types import LetterboxInfo

if TYPE_CHECKING:
    import albumentations as A

TransformOutput = tuple[np.ndarray, np.ndarray, np.ndarray, LetterboxInfo]


class DetectionTransform:
    """Callable ``(image, boxes, labels) -> (image, boxes, labels, LetterboxInfo)``; the
    compose's random state is private (global seeds do not reach it), hence ``set_seed``."""

    def __init__(
        self,
        img_size: int,
        train: bool,
        augment: Augment | None = None,
        compose: A.Compose | None = None,
    ) -> None:
        """``compose`` holds the random steps applied after the letterbox (None: none)."""
        self.img_size, self.train, self.augment, self.compose = img_size, train, augment, compose
        self.geometric = compose is not None and moves_boxes(compose.transforms)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> TransformOutput:
        """uint8 ``[H, W, 3]`` RGB, ``[N, 4]`` xyxy orig px, ``[N]`` -> uint8 ``[S, S, 3]``,
        float32 ``[M, 4]`` xyxy input px, int64 ``[M]``, info (the letterbox only, not the
        random steps). Boxes are clipped; those without area, or cut off in training, dropped.
        ValueError when boxes and labels differ in length or a box has ``x2 < x1``/``y2 < y1``."""
        info = letterbox_info(*image.shape[:2], self.img_size)
        return (*self.finish(*self.letterboxed(image, boxes, labels)), info)

    def letterboxed(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The resize part of :meth:`__call__` (``max(h, w) == S``, no pad), which a mosaic
        shares with other items: ``(image, boxes [M, 4] xyxy input px, labels [M])``."""
        boxes, labels = _prepare(image, boxes, labels)
        info = letterbox_info(*image.shape[:2], self.img_size)
        return letterbox_resize(image, self.img_size), info.to_input(boxes), labels

    def finish(
        self, resized: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pad a :meth:`letterboxed` image to ``S x S`` (grey, bottom and right) and apply the
        random steps (training): ``(image uint8 [S, S, 3], boxes [M, 4] input px, labels)``."""
        out = np.full((self.img_size, self.img_size, resized.shape[2]), PAD_VALUE, np.uint8)
        out[: resized.shape[0], : resized.shape[1]] = resized
        return self._augment(out, boxes, labels)

    def mosaic_letterboxed(
        self, resized: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Four :meth:`letterboxed` items -> one augmented ``S x S`` mosaic ``(image, boxes
        input px, labels)``; ``rng`` draws the centre. RuntimeError without mosaic."""
        from detkit.data.mosaic import mosaic_paste

        if self.augment is None or self.augment.mosaic <= 0:
            raise RuntimeError("build_transforms(..., augment=Augment(mosaic>0)) enables mosaic")
        canvas, boxes, labels = mosaic_paste(
            resized, self.img_size, rng, self.augment.min_visibility, PAD_VALUE
        )
        return self._augment(canvas, boxes, labels)

    def _augment(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.geometric:
            out = self.compose(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes, labels = np.asarray(out["bboxes"]), np.asarray(out["labels"])
        elif self.compose is not None:  # colour, blur, noise: boxes cannot change
            image = self.compose(image=image)["image"]
        return image, boxes.astype(np.float32).reshape(-1, 4), labels.astype(np.int64).reshape(-1)

    def set_seed(self, seed: int) -> None:
        """Reseed the augmentation random state (the dataset does this before every item)."""
        if self.compose is not None:
            self.compose.set_random_seed(seed)


def _prepare(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, clip to the image and drop boxes without area (albumentations rejects them)."""
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if ((boxes[:, 2:] - boxes[:, :2]) < 0).any():
        # Most likely xywh passed where xyxy is expected: fail rather than drop boxes.
        raise ValueError("boxes must be xyxy with x1 <= x2 and y1 <= y2")
    boxes = np.clip(boxes, 0, np.array([w, h, w, h], dtype=np.float32))
    keep = ((boxes[:, 2:] - boxes[:, :2]) > 0).all(axis=1)
    return boxes[keep], labels[keep]


def letterbox_info(height: int, width: int, img_size: int) -> LetterboxInfo:
    """The letterbox map of a ``height x width`` image (as ``A.LongestMaxSize`` rounds; no pad).

    Example:
        >>> letterbox_info(300, 240, 256)
        LetterboxInfo(scale_x=0.8541666666666666, scale_y=0.8533333333333334, pad_x=0.0, pad_y=0.0, orig_h=300, orig_w=240)
    """
    scale = img_size / max(height, width)
    # Same rounding as albumentations' LongestMaxSize, so the map is exact per axis.
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return LetterboxInfo(new_w / width, new_h / height, 0.0, 0.0, orig_h=height, orig_w=width)


def letterbox_resize(image: np.ndarray, img_size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[h, w, 3]``, ``max(h, w) == img_size`` (area when shrinking,
    bilinear when enlarging; ``image`` itself at that size), as the RAM cache stores it."""
    h, w = image.shape[:2]
    info = letterbox_info(h, w, img_size)
    new_w, new_h = round(w * info.scale_x), round(h * info.scale_y)
    if (new_h, new_w) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def letterbox_image(image: np.ndarray, img_size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Evaluation's and inference's preprocessing: uint8 ``[H, W, 3]`` RGB (not modified) ->
    uint8 ``[S, S, 3]`` (grey pad bottom/right) and the ``LetterboxInfo`` input px -> orig px."""
    h, w = image.shape[:2]
    resized = letterbox_resize(image, img_size)
    out = np.full((img_size, img_size, image.shape[2]), PAD_VALUE, dtype=image.dtype)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out, letterbox_info(h, w, img_size)


def build_transforms(
    img_size: int,
    train: bool,
    hflip: float = 0.5,
    hsv: bool = True,
    scale: tuple[float, float] = (0.75, 1.25),
    translate: float = 0.1,
    augment: Augment | None = None,
) -> DetectionTransform:
    """The letterbox transform; in training followed by :class:`Augment`'s random steps, from
    ``augment`` or else ``hflip``, ``hsv``, ``scale`` and ``translate`` (fraction of ``S``)."""
    if not train:
        return DetectionTransform(img_size, False)
    if augment is None:
        augment = Augment(
            hflip=hflip,
            scale=(float(scale[0]), float(scale[1])),
            translate=translate,
            hsv=Augment.hsv if hsv else (0.0, 0.0, 0.0),
        )
    return DetectionTransform(img_size, True, augment, augmentation_compose(augment))
