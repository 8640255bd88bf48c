"""Training augmentation settings and the albumentations steps built from them; boxes travel
as ``"pascal_voc"`` (xyxy px) and a cut box is dropped, never corrupted. :class:`ZoomShift` and
:class:`HSVShift` are cheaper equivalents of ``A.Affine`` (no rotation) and the HSV jitter."""

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
    """Training augmentation settings, applied after the letterbox, in input px: ``affine`` is
    the probability of zoom in ``scale``, shift up to ``translate`` of the side and rotation up
    to ``degrees`` (0: :class:`ZoomShift`; else ``A.Affine``, boxes re-fitted as ellipses);
    ``hsv`` limits (all 0: off); ``hflip``, ``blur``, ``noise``, ``mosaic`` probabilities; no
    mosaic from ``mosaic_off_epoch``; boxes keeping less than ``min_visibility`` of their area,
    or smaller than ``min_area`` (input px^2), are dropped."""

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


def augmentation_compose(augment: Augment) -> A.Compose | None:
    """:func:`augmentation_steps` as one compose (None: no step). Boxes travel as "pascal_voc"
    (xyxy px), filtered once after the last step (the same result here, whose only geometric
    steps are the affine and the flip), when a step moves pixels."""
    if not (steps := augmentation_steps(augment)):
        return None
    boxes = None
    if moves_boxes(steps):
        boxes = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=augment.min_visibility,
            min_area=augment.min_area,
            min_width=1.0,
            min_height=1.0,
            clip=True,
            check_each_transform=False,
        )
    return A.Compose(steps, bbox_params=boxes, is_check_shapes=False)


def moves_boxes(steps: list[A.BasicTransform]) -> bool:
    """True when a step is geometric (boxes must go through the compose)."""
    return any(isinstance(t, A.DualTransform) for t in steps)


class HSVShift(A.ImageOnlyTransform):
    """Hue, saturation and value jitter (``A.HueSaturationValue``'s units, each drawn in
    ``[-limit, limit]``) as one :func:`colour_matrix` ``cv2.transform``; greys stay grey."""

    def __init__(self, hue: float, sat: float, val: float, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.hue, self.sat, self.val = hue, sat, val

    def get_params(self) -> dict[str, tuple[float, float, float]]:
        limits = (self.hue, self.sat, self.val)
        return {"shift": tuple(self.py_random.uniform(-limit, limit) for limit in limits)}

    def apply(self, img: np.ndarray, shift: tuple[float, float, float] = (0, 0, 0), **params):
        """Jitter uint8 RGB ``img`` ``[H, W, 3]``; returns a new array."""
        return cv2.transform(img, colour_matrix(*shift))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue", "sat", "val")


def colour_matrix(hue: float, sat: float, val: float) -> np.ndarray:
    """Float32 ``[3, 4]`` ``M`` with ``rgb' = M[:, :3] @ rgb + M[:, 3]``: a rotation by ``2 hue``
    degrees about the grey axis, the distance from grey scaled by ``1 + 2 sat / 255``, plus ``val``.

    Example:
        >>> (colour_matrix(60.0, 0.0, 0.0)[:, :3].round(6) + 0.0).tolist()  # 120 deg: R -> G -> B
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    theta = np.deg2rad(2.0 * hue)
    grey = np.full((3, 3), 1.0 / 3.0)  # projection onto the grey axis
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3.0)  # u x (.)
    rotate = np.cos(theta) * (np.eye(3) - grey) + grey + np.sin(theta) * cross
    gain = max(0.0, 1.0 + 2.0 * sat / 255.0)
    return np.hstack([grey + gain * (rotate - grey), np.full((3, 1), val)]).astype(np.float32)


class ZoomShift(A.DualTransform):
    """``A.Affine(scale, translate_percent)`` without rotation, drawn the same way, as a whole-pixel
    crop + resize + paste (zoom exact to a pixel over the side; boxes get the pixels' map)."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.75, 1.25),
        translate: float = 0.1,
        fill: int = PAD_VALUE,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.scale, self.translate, self.fill = tuple(scale), translate, fill

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        """Per axis ``(lo, hi, d0, d1)``: source pixels ``[lo, hi)`` land on ``[d0, d1)``."""
        r = self.py_random
        zoom = r.uniform(*self.scale)
        shifts = [r.uniform(-self.translate, self.translate) for _ in range(2)]
        height, width = params["shape"][:2]
        return {
            "x_map": zoom_span(width, zoom, shifts[0] * width),
            "y_map": zoom_span(height, zoom, shifts[1] * height),
        }

    def apply(self, img: np.ndarray, x_map: tuple, y_map: tuple, **params) -> np.ndarray:
        """Zoom and shift ``img`` ``[H, W, C]``; returns a new ``[H, W, C]`` array."""
        out = np.full_like(img, self.fill)
        (xl, xh, x0, x1), (yl, yh, y0, y1) = x_map, y_map
        if xh <= xl or yh <= yl or x1 <= x0 or y1 <= y0:
            return out
        k = min((x1 - x0) / (xh - xl), (y1 - y0) / (yh - yl))
        interpolation = cv2.INTER_LINEAR if k >= 0.5 else cv2.INTER_AREA
        part = cv2.resize(img[yl:yh, xl:xh], (x1 - x0, y1 - y0), interpolation=interpolation)
        if part.ndim < img.ndim:  # cv2 drops a single channel axis
            part = part[..., None]
        h, w = img.shape[:2]
        out[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = part[
            max(-y0, 0) : (y1 - y0) - max(y1 - h, 0), max(-x0, 0) : (x1 - x0) - max(x1 - w, 0)
        ]
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, x_map: tuple, y_map: tuple, **params):
        """Map normalised xyxy ``bboxes`` ``[N, 4 + k]`` as the pixels moved (not clipped)."""
        height, width = params["shape"][:2]
        out = bboxes.copy()
        for cols, (lo, hi, d0, d1), side in (((0, 2), x_map, width), ((1, 3), y_map, height)):
            k = (d1 - d0) / (hi - lo) if hi > lo else 0.0
            for c in cols:
                out[:, c] = (d0 + (bboxes[:, c] * side - lo) * k) / side
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "translate", "fill")


def zoom_span(side: int, zoom: float, shift: float) -> tuple[int, int, int, int]:
    """``(lo, hi, d0, d1)``: source pixels ``[lo, hi)`` land on ``[d0, d1)`` (up to one pixel
    past ``[0, side)``) under ``x' = zoom (x - side/2) + side/2 + shift``; ``hi <= lo``: none.

    Example:
        >>> zoom_span(100, 2.0, 0.0)  # the middle half, doubled
        (25, 75, 0, 100)
    """
    offset = (1.0 - zoom) * side / 2 + shift
    lo = max(0, int(np.floor(-offset / zoom)))
    hi = min(side, int(np.ceil((side - offset) / zoom)))
    return lo, hi, round(zoom * lo + offset), round(zoom * hi + offset)


def augmentation_steps(augment: Augment) -> list[A.BasicTransform]:
    """The training-only steps that follow the letterbox (or the mosaic)."""
    a, steps = augment, []
    if a.affine > 0 and a.degrees == 0 and (tuple(a.scale) != (1.0, 1.0) or a.translate > 0):
        steps.append(ZoomShift(tuple(a.scale), a.translate, PAD_VALUE, p=a.affine))
    elif a.affine > 0 and a.degrees > 0:  # rotation needs the general warp
        steps.append(
            A.Affine(
                scale=tuple(a.scale),
                translate_percent=(-a.translate, a.translate),
                rotate=(-a.degrees, a.degrees),
                rotate_method="ellipse",
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
