"""Training augmentation settings and the albumentations steps built from them.

Every step is bbox-aware: boxes travel as ``"pascal_voc"`` (= detkit's xyxy px) and a box the
affine cuts is dropped when less than ``min_visibility`` of it stays in the image, never
corrupted. The colour jitter is a small albumentations transform of our own (:class:`HSVShift`),
same meaning as ``A.HueSaturationValue`` at about half the cost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# albumentations queries PyPI for a newer version on import; detkit never touches the network
# at run time. setdefault keeps an explicit user choice.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np

PAD_VALUE = 114
"""Grey used for the letterbox padding and for areas uncovered by the random affine."""

MIN_VISIBILITY = 0.25
"""Training drops boxes that keep less than this fraction of their area inside the image."""


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


def bbox_params(augment: Augment) -> A.BboxParams:
    """Boxes as "pascal_voc" (= xyxy px); cut boxes are dropped, never corrupted.

    Boxes are filtered once, after the last step (``check_each_transform=False``): the same
    result for this pipeline, whose only geometric steps are the affine and the flip.
    """
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=augment.min_visibility,
        min_area=augment.min_area,
        min_width=1.0,
        min_height=1.0,
        clip=True,
        check_each_transform=False,
    )


class HSVShift(A.ImageOnlyTransform):
    """Hue, saturation and value shifts with ``A.HueSaturationValue``'s meaning, in one lookup.

    Each shift is drawn uniformly in ``[-limit, limit]`` (hue in OpenCV units, 180 per turn;
    saturation and value out of 255); grey pixels (saturation 0) stay grey. One 3-channel
    ``cv2.LUT`` between the two colour conversions does what ``HueSaturationValue`` does with a
    split, three passes and a merge, at about half the cost.
    """

    def __init__(self, hue: float, sat: float, val: float, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.hue, self.sat, self.val = hue, sat, val

    def get_params(self) -> dict[str, tuple[float, float, float]]:
        r = self.py_random
        return {
            "shift": (
                r.uniform(-self.hue, self.hue),
                r.uniform(-self.sat, self.sat),
                r.uniform(-self.val, self.val),
            )
        }

    def apply(self, img: np.ndarray, shift: tuple[float, float, float] = (0, 0, 0), **params):
        """Shift uint8 RGB ``img`` ``[H, W, 3]``; returns a new array."""
        h, s, v = shift
        x = np.arange(256, dtype=np.float32)
        lut = np.stack(
            [
                np.mod(np.rint(x + h), 180),
                np.clip(np.rint(x + s), 0, 255),
                np.clip(np.rint(x + v), 0, 255),
            ],
            axis=1,
        )
        lut[0, 1] = 0  # grey stays grey
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        return cv2.cvtColor(
            cv2.LUT(hsv, lut.astype(np.uint8).reshape(256, 1, 3)), cv2.COLOR_HSV2RGB
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue", "sat", "val")


def augmentation_steps(augment: Augment) -> list[A.BasicTransform]:
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
        steps.append(HSVShift(*a.hsv))
    if a.blur > 0:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), p=a.blur))
    if a.noise > 0:
        steps.append(A.GaussNoise(std_range=(0.02, 0.08), p=a.noise))
    return steps
