"""Letterbox and training augmentation (albumentations), with the map back to the original image.

Letterbox: the longest side is resized to ``img_size`` keeping the aspect ratio, then the image is
padded with grey (114) at the bottom and right to ``img_size x img_size``. Top-left placement makes
the inverse a pure scale: ``x_orig = x_in / scale_x``, see ``LetterboxInfo``.

Boxes are handed to albumentations as ``"pascal_voc"``, which is detkit's xyxy px: no conversion.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

# albumentations queries PyPI for a newer version on import; detkit never touches the network
# at run time. setdefault keeps an explicit user choice.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np

from detkit.data.types import LetterboxInfo

PAD_VALUE = 114
"""Grey used for the letterbox padding and for areas uncovered by the random affine."""

MIN_VISIBILITY = 0.25
"""Training drops boxes that keep less than this fraction of their area inside the image."""

TransformOutput = tuple[np.ndarray, np.ndarray, np.ndarray, LetterboxInfo]


@dataclass(frozen=True)
class Augment:
    """Training augmentation settings (all applied after the letterbox, in input px).

    Attributes:
        hflip: probability of a horizontal flip.
        affine: probability of a random affine: isotropic zoom in ``scale``, shift up to
            ``translate`` of the side, rotation up to ``degrees`` (0: none; rotated boxes are
            re-fitted with the "ellipse" rule, which keeps them tighter than corner boxes).
        scale: zoom range of the affine.
        translate: largest shift, as a fraction of the input side.
        degrees: largest rotation in degrees.
        hsv: hue, saturation and value shift limits (albumentations units); all 0 = off.
        blur: probability of a Gaussian blur (kernel 3 or 5).
        noise: probability of Gaussian noise (std 2-8% of the range).
        mosaic: probability that a training item is a 4-image mosaic (:meth:`DetectionTransform.mosaic`;
            :class:`~detkit.data.dataset.DetectionDataset` picks the partner images).
        mosaic_off_epoch: from this epoch on no mosaic (None: never switched off).
        min_visibility: boxes keeping less than this fraction of their area are dropped.
        min_area: boxes smaller than this (input px^2) after augmentation are dropped.
    """

    hflip: float = 0.5
    affine: float = 0.5
    scale: tuple[float, float] = (0.75, 1.25)
    translate: float = 0.1
    degrees: float = 0.0
    hsv: tuple[float, float, float] = (10.0, 30.0, 20.0)
    blur: float = 0.0
    noise: float = 0.0
    mosaic: float = 0.0
    mosaic_off_epoch: int | None = None
    min_visibility: float = MIN_VISIBILITY
    min_area: float = 0.0

    def mosaic_active(self, epoch: int) -> bool:
        """True when items of ``epoch`` may be mosaics."""
        return self.mosaic > 0 and (self.mosaic_off_epoch is None or epoch < self.mosaic_off_epoch)


class DetectionTransform:
    """Callable ``(image, boxes, labels) -> (image, boxes, labels, LetterboxInfo)``.

    Built by ``build_transforms``; holds albumentations composes (the letterbox path and, when
    ``augment.mosaic > 0``, the mosaic path) whose random state is private (global numpy/random
    seeds do not reach it), hence ``set_seed``.
    """

    def __init__(
        self,
        compose: A.Compose,
        img_size: int,
        train: bool,
        augment: Augment | None = None,
        mosaic_compose: A.Compose | None = None,
    ) -> None:
        """Wrap a compose that starts with the letterbox (see ``build_transforms``)."""
        self.compose = compose
        self.img_size = img_size
        self.train = train
        self.augment = augment
        self.mosaic_compose = mosaic_compose
        self._resize = A.Compose([letterbox_resize(img_size)], bbox_params=_bbox_params(None))

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
        h, w = image.shape[:2]
        boxes, labels = _prepare(image, boxes, labels)
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        return _output(out, letterbox_info(h, w, self.img_size))

    def mosaic(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> TransformOutput:
        """Combine four images into one ``S x S`` training image (YOLOv4 mosaic), then augment.

        Each image is letterboxed into one cell of a ``2S x 2S`` grid around a random centre;
        the ``S x S`` window around that centre is kept, and the affine, flip, colour, blur and
        noise steps follow as in :meth:`__call__`. Boxes cut by the window keep their visible part
        when at least ``min_visibility`` of them remains.

        Args:
            items: four ``(image uint8 HxWx3 RGB, boxes [N,4] xyxy orig px, labels [N])``; the
                first is the primary item.

        Returns:
            As :meth:`__call__`; ``info`` is the primary image's letterbox map (meaningless for
            the mosaic, which only training uses).

        Raises:
            RuntimeError: the transform was built without mosaic (``augment.mosaic == 0``).
        """
        if self.mosaic_compose is None:
            raise RuntimeError("build_transforms(..., augment=Augment(mosaic>0)) enables mosaic")
        # Each image is first letterbox-resized exactly as the plain path and the RAM cache do,
        # so the mosaic's own cell fitting is the identity and a cached run gets the same pixels.
        prepared = []
        for im, b, lab in items:
            b, lab = _prepare(im, b, lab)
            out = self._resize(image=im, bboxes=b, labels=lab)
            prepared.append((out["image"], *_prepare(out["image"], out["bboxes"], out["labels"])))
        (image, boxes, labels), rest = prepared[0], prepared[1:]
        meta = [{"image": im, "bboxes": b, "labels": lab} for im, b, lab in rest]
        out = self.mosaic_compose(image=image, bboxes=boxes, labels=labels, mosaic_metadata=meta)
        h, w = items[0][0].shape[:2]
        return _output(out, letterbox_info(h, w, self.img_size))

    def set_seed(self, seed: int) -> None:
        """Reseed the augmentation random state (the dataset does this before every item)."""
        self.compose.set_random_seed(seed)
        if self.mosaic_compose is not None:
            self.mosaic_compose.set_random_seed(seed)


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


def _output(out: dict, info: LetterboxInfo) -> TransformOutput:
    out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    return out["image"], out_boxes, out_labels, info


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


def letterbox_resize(img_size: int) -> A.LongestMaxSize:
    """The resize step of the letterbox (also used to fill the RAM cache, so pixels match)."""
    return A.LongestMaxSize(max_size=img_size, area_for_downscale="image")


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
    if augment is None:
        augment = Augment(
            hflip=hflip,
            scale=(float(scale[0]), float(scale[1])),
            translate=translate,
            hsv=Augment.hsv if hsv else (0.0, 0.0, 0.0),
        )
    steps: list[A.BasicTransform] = [
        letterbox_resize(img_size),
        A.PadIfNeeded(
            min_height=img_size,
            min_width=img_size,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=PAD_VALUE,
        ),
    ]
    if not train:
        return DetectionTransform(A.Compose(steps, bbox_params=_bbox_params(None)), img_size, False)
    after = _augmentations(augment)
    compose = A.Compose(steps + after, bbox_params=_bbox_params(augment))
    mosaic = None
    if augment.mosaic > 0:
        grid = A.Mosaic(
            grid_yx=(2, 2),
            target_size=(img_size, img_size),
            cell_shape=(img_size, img_size),
            center_range=(0.3, 0.7),
            fit_mode="contain",
            fill=PAD_VALUE,
            p=1.0,
        )
        mosaic = A.Compose([grid, *_augmentations(augment)], bbox_params=_bbox_params(augment))
    return DetectionTransform(compose, img_size, True, augment, mosaic)


def _bbox_params(augment: Augment | None) -> A.BboxParams:
    """Boxes as "pascal_voc" (= xyxy px); in training, cut boxes are dropped, never corrupted."""
    train = augment is not None
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=augment.min_visibility if train else 0.0,
        min_area=augment.min_area if train else 0.0,
        min_width=1.0 if train else 0.0,
        min_height=1.0 if train else 0.0,
        clip=True,
    )


def _augmentations(augment: Augment) -> list[A.BasicTransform]:
    """The training-only steps that follow the letterbox (or the mosaic)."""
    a, steps = augment, []
    if a.affine > 0 and (tuple(a.scale) != (1.0, 1.0) or a.translate > 0 or a.degrees > 0):
        steps.append(
            A.Affine(
                scale=tuple(a.scale),
                translate_percent=(-a.translate, a.translate),
                rotate=(-a.degrees, a.degrees),
                rotate_method="ellipse" if a.degrees > 0 else "largest_box",
                keep_ratio=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=PAD_VALUE,
                p=a.affine,
            )
        )
    if a.hflip > 0:
        steps.append(A.HorizontalFlip(p=a.hflip))
    if any(a.hsv):
        h, s, v = a.hsv
        steps.append(A.HueSaturationValue(hue_shift_limit=h, sat_shift_limit=s, val_shift_limit=v))
    if a.blur > 0:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=a.blur))
    if a.noise > 0:
        steps.append(A.GaussNoise(std_range=(0.02, 0.08), p=a.noise))
    return steps


@functools.lru_cache(maxsize=8)
def _eval_transform(img_size: int) -> DetectionTransform:
    return build_transforms(img_size, train=False)


def letterbox_image(image: np.ndarray, img_size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox one image for inference, exactly as evaluation preprocesses it.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        img_size: side ``S`` of the square network input, px.

    Returns:
        uint8 ``[S, S, 3]`` RGB image and the ``LetterboxInfo`` mapping input px to orig px.
    """
    empty = np.zeros((0, 4), dtype=np.float32)
    out, _, _, info = _eval_transform(img_size)(image, empty, np.zeros(0, dtype=np.int64))
    return out, info
