"""The "shapes-hard" benchmark set: the built-in generator made hard enough to tell recipes apart
(a thin-armed class, unlabelled look-alikes, half the boxes COCO-small, occlusion, noise, blur and
low JPEG quality; see docs/architecture.md). Deterministic per ``(seed, split, index)``."""

from __future__ import annotations

import math

import cv2
import numpy as np

from detkit.data import synthetic as S

HARD_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
"""Class names of the hard set; label ``i`` is COCO category id ``i + 1``."""

MIN_DIAMETER = 8.0  # px
MAX_DIAMETER_FRACTION = 0.4  # of the shorter image side
MAX_OBJECTS = 8
MIN_VISIBLE = 0.6  # fraction of an object's pixels that later objects must leave visible
MIN_PIXELS = 16  # an object drawn with fewer solid pixels is redrawn elsewhere
_LOOKALIKES = ("pentagon", "hexagon", "ellipse")


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices ``[K, 2]`` (x, y px) of a class shape or a look-alike inscribed in a circle."""
    if kind in ("pentagon", "hexagon"):
        k = 5 if kind == "pentagon" else 6
        theta = angle + 2 * math.pi * np.arange(k) / k
        return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
    if kind == "cross":  # a plus sign whose arms are a third of its width
        a, b = radius, radius / 3
        quarter = np.array([(-b, -a), (b, -a), (b, -b)])  # a quarter turn gives the next
        xy = np.concatenate([quarter, quarter[:, ::-1] * (-1, 1)])
        xy = np.concatenate([xy, -xy])
        c, s = math.cos(angle), math.sin(angle)
        return np.stack([cx + c * xy[:, 0] - s * xy[:, 1], cy + s * xy[:, 0] + c * xy[:, 1]], 1)
    return S._shape_polygon(kind, cx, cy, radius, angle)


def _alpha(
    kind: str, cx: float, cy: float, radius: float, angle: float, shape: tuple[int, int]
) -> np.ndarray:
    """Anti-aliased coverage (uint8 ``[H, W]``, 0..255) of one filled shape or look-alike."""
    if kind != "ellipse":
        return S._shape_alpha(kind, cx, cy, radius, angle, shape, _polygon)
    # elongated: 2-4x longer than wide, never circle-like
    mask = np.zeros(shape, dtype=np.uint8)
    one = 1 << S._SUBPIXEL_SHIFT
    centre = (round(cx * one), round(cy * one))
    axes = (round(radius * one), round(radius / (2 + 2 * (angle % 1.0)) * one))
    deg = math.degrees(angle)
    cv2.ellipse(mask, centre, axes, deg, 0, 360, 255, -1, cv2.LINE_AA, S._SUBPIXEL_SHIFT)
    return mask


def _log_uniform_diameter(rng: np.random.Generator, height: int, width: int) -> float:
    hi = MAX_DIAMETER_FRACTION * min(height, width)
    return float(math.exp(rng.uniform(math.log(MIN_DIAMETER), math.log(hi))))


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Unlabelled things, in place: filled look-alikes, class-shaped outlines, blobs and lines."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 6))):
        kind = _LOOKALIKES[int(rng.integers(len(_LOOKALIKES)))]
        radius = _log_uniform_diameter(rng, height, width) / 2
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        alpha = _alpha(kind, cx, cy, radius, rng.uniform(0, 2 * math.pi), (height, width))
        if alpha.any():
            S._blend(image, alpha, np.asarray(S._random_colour(rng), np.float32))
    for _ in range(int(rng.integers(0, 5))):
        kind = HARD_CLASSES[int(rng.integers(len(HARD_CLASSES)))]
        pts = _polygon(kind, rng.uniform(0, width), rng.uniform(0, height), rng.uniform(6, 40), 0.0)
        thickness = int(rng.integers(1, 3))
        colour = S._random_colour(rng)
        cv2.polylines(image, [S._fixed(pts)], True, colour, thickness, cv2.LINE_AA, 4)
    for _ in range(int(rng.integers(0, 10))):
        centre = S._random_point(rng, height, width)
        cv2.circle(image, centre, int(rng.integers(1, 4)), S._random_colour(rng), -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 6))):
        p0, p1 = S._random_point(rng, height, width), S._random_point(rng, height, width)
        cv2.line(image, p0, p1, S._random_colour(rng), int(rng.integers(1, 4)), cv2.LINE_AA)


def _place(
    rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, areas: list[int]
) -> int | None:
    """Draw one object where it leaves every earlier one >= MIN_VISIBLE seen, recording its
    index in ``owner`` (int16 ``[H, W]``, -1 = background) and its pixel count in ``areas``;
    its label, or None (nothing changed) when no place was found."""
    height, width = image.shape[:2]
    for _ in range(30):
        label = int(rng.integers(len(HARD_CLASSES)))
        radius = _log_uniform_diameter(rng, height, width) / 2
        cx = rng.uniform(radius, width - radius)
        cy = rng.uniform(radius, height - radius)
        angle = rng.uniform(0, 2 * math.pi)
        alpha = _alpha(HARD_CLASSES[label], cx, cy, radius, angle, owner.shape)
        solid = alpha >= 128
        n_solid = int(solid.sum())
        if n_solid < MIN_PIXELS:
            continue
        covered = np.bincount(owner[solid] + 1, minlength=len(areas) + 1)[1:]
        visible = np.bincount(owner.ravel() + 1, minlength=len(areas) + 1)[1:]
        if np.any(visible - covered < MIN_VISIBLE * np.asarray(areas, dtype=np.float64)):
            continue
        colour = S._contrasting_colour(rng, image[solid].mean(axis=0), far=70.0, luma=30.0)
        S._blend(image, alpha, colour)
        owner[solid] = len(areas)
        areas.append(n_solid)
        return label
    return None


def render_hard_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One hard scene from ``rng`` alone: uint8 ``[height, width, 3]`` RGB, float32 ``[N >= 1, 4]``
    xyxy px (the tight box of each object's visible pixels), int64 ``[N]`` into ``HARD_CLASSES``."""
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    image = S._background(rng, height, width)
    image += np.float32(10.0) * noise
    _draw_clutter(rng, image)
    owner = np.full((height, width), -1, dtype=np.int16)
    areas: list[int] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        if (label := _place(rng, image, owner, areas)) is not None:
            labels.append(label)
    if not labels:  # keeps N >= 1; 30 failed tries on one object is already rare
        boxes, labels = S._fallback_object(rng, image)
    else:
        boxes = [S._tight_box(owner == k) for k in range(len(labels))]
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 1.2)))
    image += np.float32(4.0) * noise
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


HARD = S.ShapesVariant(
    "shapes-hard", HARD_CLASSES, render_hard_scene, side_range=(288, 352), jpeg_quality=(35, 95)
)
"""The hard benchmark variant (``data=shapes_hard``)."""

VARIANTS: dict[str, S.ShapesVariant] = {"easy": S.EASY, "hard": HARD}
"""``data.variant`` name -> variant."""
