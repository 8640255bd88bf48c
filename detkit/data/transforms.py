"""Letterbox and training augmentation (albumentations), with the map back to the original image.

Letterbox: the longest side is resized to ``img_size`` keeping the aspect ratio, then the image is
padded with grey (114) at the bottom and right to ``img_size x img_size``. Top-left placement makes
the inverse a pure scale: ``x_orig = x_in / scale_x``, see ``LetterboxInfo``.

Boxes are handed to albumentations as ``"pascal_voc"``, which is detkit's xyxy px: no conversion.
"""

from __future__ import annotations

import functools
import os

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


class DetectionTransform:
    """Callable ``(image, boxes, labels) -> (image, boxes, labels, LetterboxInfo)``.

    Built by ``build_transforms``; holds an ``albumentations.Compose`` whose random state is
    private (global numpy/random seeds do not reach it), hence ``set_seed``.
    """

    def __init__(self, compose: A.Compose, img_size: int, train: bool) -> None:
        """Wrap a compose that starts with the letterbox (see ``build_transforms``)."""
        self.compose = compose
        self.img_size = img_size
        self.train = train

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
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
        if ((boxes[:, 2:] - boxes[:, :2]) < 0).any():
            # Most likely xywh passed where xyxy is expected: fail rather than drop boxes.
            raise ValueError("boxes must be xyxy with x1 <= x2 and y1 <= y2")
        boxes = np.clip(boxes, 0, np.array([w, h, w, h], dtype=np.float32))
        # Boxes with no area inside the image carry no signal (and albumentations rejects them).
        keep = ((boxes[:, 2:] - boxes[:, :2]) > 0).all(axis=1)
        out = self.compose(image=image, bboxes=boxes[keep], labels=labels[keep])
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return out["image"], out_boxes, out_labels, letterbox_info(h, w, self.img_size)

    def set_seed(self, seed: int) -> None:
        """Reseed the augmentation random state (used per DataLoader worker)."""
        self.compose.set_random_seed(seed)


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


def build_transforms(
    img_size: int,
    train: bool,
    hflip: float = 0.5,
    hsv: bool = True,
    scale: tuple[float, float] = (0.75, 1.25),
    translate: float = 0.1,
) -> DetectionTransform:
    """Build the letterbox (+ light augmentation in training) transform.

    Training adds, after the letterbox: a random affine (isotropic scale in ``scale``, shift up
    to ``translate`` of the side, grey fill) with probability 0.5, a horizontal flip with
    probability ``hflip`` and, if ``hsv``, a hue/saturation/value jitter. Eval is deterministic.

    Args:
        img_size: side ``S`` of the square network input, px.
        train: training (random) or evaluation (deterministic) mode.
        hflip: probability of a horizontal flip (training only).
        hsv: colour jitter on or off (training only).
        scale: range of the random zoom (training only); ``(1, 1)`` with ``translate=0``
            turns the affine off.
        translate: largest random shift as a fraction of ``S`` (training only).

    Returns:
        A ``DetectionTransform``: ``(image uint8 HxWx3 RGB, boxes [N,4] xyxy orig px, labels [N])
        -> (image uint8 SxSx3, boxes float32 [M,4] xyxy input px, labels int64 [M],
        LetterboxInfo)``.
    """
    steps: list[A.BasicTransform] = [
        A.LongestMaxSize(max_size=img_size, area_for_downscale="image"),
        A.PadIfNeeded(
            min_height=img_size,
            min_width=img_size,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=PAD_VALUE,
        ),
    ]
    if train:
        steps += _augmentations(hflip, hsv, scale, translate)
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=MIN_VISIBILITY if train else 0.0,
        min_width=1.0 if train else 0.0,
        min_height=1.0 if train else 0.0,
        clip=True,
    )
    return DetectionTransform(A.Compose(steps, bbox_params=bbox_params), img_size, train)


def _augmentations(
    hflip: float, hsv: bool, scale: tuple[float, float], translate: float
) -> list[A.BasicTransform]:
    """The training-only steps that follow the letterbox."""
    steps: list[A.BasicTransform] = []
    if tuple(scale) != (1.0, 1.0) or translate > 0:
        affine = A.Affine(
            scale=scale,
            translate_percent=(-translate, translate),
            keep_ratio=True,
            border_mode=cv2.BORDER_CONSTANT,
            fill=PAD_VALUE,
            p=0.5,
        )
        steps.append(affine)
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if hsv:
        steps.append(
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=30, val_shift_limit=20)
        )
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
