"""Letterbox and training augmentation (albumentations), with the map back to the original image.

Letterbox: the longest side is resized to ``img_size`` keeping the aspect ratio (area averaging
when shrinking, bilinear when enlarging), then the image is padded with grey (114) at the bottom
and right to ``img_size x img_size``. Top-left placement makes the inverse a pure scale:
``x_orig = x_in / scale_x``, see ``LetterboxInfo``. The letterbox is two OpenCV calls and one
affine map of the boxes; albumentations runs only the random steps that follow it in training
(its per-call bookkeeping costs more than the resize itself).

Boxes are handed to albumentations as ``"pascal_voc"``, which is detkit's xyxy px: no conversion.
"""

from __future__ import annotations

import os

# albumentations queries PyPI for a newer version on import; detkit never touches the network
# at run time. setdefault keeps an explicit user choice.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np

from detkit.data.augment import (
    MIN_VISIBILITY,
    PAD_VALUE,
    Augment,
    HSVShift,
    augmentation_steps,
    bbox_params,
)
from detkit.data.types import LetterboxInfo

__all__ = [
    "MIN_VISIBILITY",
    "PAD_VALUE",
    "Augment",
    "DetectionTransform",
    "HSVShift",
    "build_transforms",
    "letterbox_image",
    "letterbox_info",
    "letterbox_resize",
]


TransformOutput = tuple[np.ndarray, np.ndarray, np.ndarray, LetterboxInfo]


class DetectionTransform:
    """Callable ``(image, boxes, labels) -> (image, boxes, labels, LetterboxInfo)``.

    Built by ``build_transforms``: the letterbox, then (training) an albumentations compose of
    random steps whose random state is private (global numpy/random seeds do not reach it),
    hence ``set_seed``.
    """

    def __init__(
        self,
        img_size: int,
        train: bool,
        augment: Augment | None = None,
        compose: A.Compose | None = None,
    ) -> None:
        """``compose`` holds the random steps applied after the letterbox (None: none)."""
        self.img_size = img_size
        self.train = train
        self.augment = augment
        self.compose = compose
        self.geometric = compose is not None and any(
            isinstance(t, A.DualTransform) for t in compose.transforms
        )

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> TransformOutput:
        """Letterbox (and, in training, augment) one image with its boxes.

        Args:
            image: uint8 ``[H, W, 3]`` RGB.
            boxes: ``[N, 4]`` xyxy, orig px (``N`` may be 0); clipped to the image first, and
                boxes left with no area are dropped.
            labels: ``[N]`` int labels, aligned with ``boxes``.

        Returns:
            ``image`` uint8 ``[S, S, 3]`` RGB with ``S = img_size``; ``boxes`` float32 ``[M, 4]``
            xyxy, input px; ``labels`` int64 ``[M]`` (in training, boxes cut off by the affine
            are dropped, so ``M <= N``); ``info`` the letterbox map. ``info`` is exact in eval
            mode; in training it describes the letterbox only, not the flip and affine.

        Raises:
            ValueError: ``boxes`` and ``labels`` differ in length, or a box has ``x2 < x1`` or
                ``y2 < y1``.
        """
        info = letterbox_info(*image.shape[:2], self.img_size)
        return (*self.finish(*self.letterboxed(image, boxes, labels)), info)

    def letterboxed(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The letterbox *resize* of one image (longest side ``S``, no padding yet) with its
        boxes: the part of an item that a mosaic can share with other items.

        Args:
            image: uint8 ``[H, W, 3]`` RGB. boxes: ``[N, 4]`` xyxy orig px. labels: ``[N]``.

        Returns:
            ``(image uint8 [h, w, 3] with max(h, w) == S, boxes float32 [M, 4] xyxy input px,
            labels int64 [M])``, boxes clipped and those without area dropped.
        """
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

    def mosaic(
        self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator
    ) -> TransformOutput:
        """Combine four images into one ``S x S`` training image (YOLOv4 mosaic), then augment.

        Each image is letterbox-resized (:meth:`letterboxed`) and the four are placed around
        a random centre, see :meth:`mosaic_letterboxed`.

        Args:
            items: four ``(image uint8 HxWx3 RGB, boxes [N,4] xyxy orig px, labels [N])``; the
                first is the primary item.
            rng: chooses the centre (the dataset passes one seeded from the item's key).

        Returns:
            As :meth:`__call__`; ``info`` is the primary image's letterbox map (meaningless for
            the mosaic, which only training uses).

        Raises:
            RuntimeError: the transform was built without mosaic (``augment.mosaic == 0``).
        """
        resized = [self.letterboxed(*item) for item in items]
        first = letterbox_info(*items[0][0].shape[:2], self.img_size)
        return (*self.mosaic_letterboxed(resized, rng), first)

    def mosaic_letterboxed(
        self, resized: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mosaic of four :meth:`letterboxed` items around a random centre
        (:func:`~detkit.data.mosaic.mosaic_paste`), then the random steps (affine, flip, colour,
        blur, noise) as in :meth:`__call__`: ``(image uint8 [S, S, 3], boxes [M, 4] input px,
        labels)``.

        Raises:
            RuntimeError: the transform was built without mosaic (``augment.mosaic == 0``).
        """
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
        """The random steps (if any) on a letterboxed image with boxes in input px."""
        if self.compose is None:
            return image, boxes.astype(np.float32).reshape(-1, 4), labels.astype(np.int64)
        if not self.geometric:  # colour, blur, noise: boxes cannot change
            out = self.compose(image=image)["image"]
            return out, boxes.astype(np.float32).reshape(-1, 4), labels.astype(np.int64)
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return out["image"], out_boxes, np.asarray(out["labels"], dtype=np.int64).reshape(-1)

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
    """The letterbox map for an ``height x width`` image, as ``A.LongestMaxSize`` computes it.

    Args:
        height: original height in px.
        width: original width in px.
        img_size: network input side in px.

    Returns:
        ``LetterboxInfo`` with ``pad_x = pad_y = 0`` (top-left placement).

    Example:
        >>> letterbox_info(300, 240, 256)
        LetterboxInfo(scale_x=0.8541666666666666, scale_y=0.8533333333333334, pad_x=0.0, pad_y=0.0, orig_h=300, orig_w=240)
    """
    scale = img_size / max(height, width)
    # Same rounding as albumentations' LongestMaxSize, so the map is exact per axis.
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return LetterboxInfo(
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_x=0.0,
        pad_y=0.0,
        orig_h=height,
        orig_w=width,
    )


def letterbox_resize(image: np.ndarray, img_size: int) -> np.ndarray:
    """Resize ``image`` so that its longest side is ``img_size`` (no padding).

    Area averaging when shrinking (no aliasing), bilinear when enlarging; the size is
    :func:`letterbox_info`'s. The RAM cache stores exactly this, so cached runs see the same
    pixels.

    Args:
        image: uint8 ``[H, W, 3]``; returned as is when it already has the target size.
        img_size: network input side ``S``, px.

    Returns:
        uint8 ``[h, w, 3]`` with ``max(h, w) == S``.
    """
    h, w = image.shape[:2]
    info = letterbox_info(h, w, img_size)
    new_w, new_h = round(w * info.scale_x), round(h * info.scale_y)
    if (new_h, new_w) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if new_w * new_h < w * h else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def letterbox_image(image: np.ndarray, img_size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox one image, exactly as evaluation and inference preprocess it.

    Args:
        image: uint8 ``[H, W, 3]`` RGB (not modified).
        img_size: side ``S`` of the square network input, px.

    Returns:
        uint8 ``[S, S, 3]`` RGB image (padding grey 114 at the bottom and right) and the
        ``LetterboxInfo`` mapping input px to orig px.
    """
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
    """Build the letterbox (+ augmentation in training) transform.

    Training adds, after the letterbox: a random affine, a horizontal flip, a hue/saturation/value
    jitter, and optionally blur and noise, each with its probability (see :class:`Augment`); with
    ``augment.mosaic > 0`` the transform can also build mosaics. Eval is deterministic.

    Args:
        img_size: side ``S`` of the square network input, px.
        train: training (random) or evaluation (deterministic) mode.
        hflip: probability of a horizontal flip (training only; ignored when ``augment`` is
            given).
        hsv: colour jitter on or off (ignored when ``augment`` is given).
        scale: range of the random zoom; ``(1, 1)`` with ``translate=0`` turns the affine off
            (ignored when ``augment`` is given).
        translate: largest random shift as a fraction of ``S`` (ignored when ``augment`` is
            given).
        augment: every training setting at once; None builds one from the arguments above
            (affine probability 0.5, no rotation, blur, noise or mosaic).

    Returns:
        A ``DetectionTransform``: ``(image uint8 HxWx3 RGB, boxes [N,4] xyxy orig px, labels [N])
        -> (image uint8 SxSx3, boxes float32 [M,4] xyxy input px, labels int64 [M],
        LetterboxInfo)``.
    """
    if not train:
        return DetectionTransform(img_size, False)
    if augment is None:
        augment = Augment(
            hflip=hflip,
            scale=(float(scale[0]), float(scale[1])),
            translate=translate,
            hsv=Augment.hsv if hsv else (0.0, 0.0, 0.0),
        )
    steps = augmentation_steps(augment)
    geometric = any(isinstance(t, A.DualTransform) for t in steps)
    boxes = bbox_params(augment) if geometric else None
    compose = A.Compose(steps, bbox_params=boxes, is_check_shapes=False) if steps else None
    return DetectionTransform(img_size, True, augment, compose)
