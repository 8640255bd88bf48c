"""The built-in "shapes" dataset (COCO format, no download): contrasting solid shapes, no
occlusion, distractors unlike any shape. Each image's generator is seeded from
``(seed, split, index)``, so a seed gives byte-identical files in any generation order."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detkit.boxes.coords import box_convert
from detkit.data.groundtruth import write_coco

logger = logging.getLogger(__name__)

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""Class names; label ``i`` is COCO category id ``i + 1``."""

SHAPES_VERSION = "v1"
"""Bump when rendering changes, so cached datasets are regenerated under a new name."""

IMAGE_SIDE_RANGE = (240, 320)  # inclusive; height and width drawn independently
MIN_OBJECT_SIZE = 16.0  # px, diameter of the shape's circumscribed circle
MAX_OBJECT_FRACTION = 0.45  # of the shorter image side
MAX_OBJECTS = 6
MAX_IOU = 0.3
_SUBPIXEL_SHIFT = 4  # cv2 drawing with 4 fractional bits
_STAR_INNER_RATIO = 0.45


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1–6 non-touching filled shapes (box IoU < ``MAX_IOU``) over clutter, from ``rng`` alone:
    uint8 ``[height, width, 3]`` RGB, float32 ``[N >= 1, 4]`` xyxy px (the tight integer box of
    pixels at least half covered), int64 ``[N]`` labels into ``SHAPES_CLASSES``."""
    # One unit noise field serves the background grain and the final sensor noise:
    # sampling it twice would double the cost of a scene.
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    image = _background(rng, height, width)
    image += np.float32(6.0) * noise
    _draw_distractors(rng, image)
    occupied = np.zeros((height, width), dtype=np.uint8)
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        if (placed := _place_object(rng, image, occupied, boxes)) is not None:
            boxes.append(placed[0])
            labels.append(placed[1])
    if not boxes:  # vanishingly rare on 240+ px images; keeps N >= 1 as documented
        boxes, labels = _fallback_object(rng, image)
    image += np.float32(3.0) * noise
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Colour gradient + low-frequency blotches + texture lines, float32 ``[H, W, 3]``."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(width, dtype=np.float32) * math.cos(angle)
    ys = np.arange(height, dtype=np.float32) * math.sin(angle)
    t = ys[:, None] + xs[None, :]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    grid = rng.normal(0.0, 25.0, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    image += cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 9))):
        p0, p1 = _random_point(rng, height, width), _random_point(rng, height, width)
        thickness = int(rng.integers(1, 3))
        cv2.line(image, p0, p1, _random_colour(rng), thickness, cv2.LINE_AA)
    return image


def _draw_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draw non-objects in place: 1 px hollow outlines and blobs smaller than 6 px."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        kind = SHAPES_CLASSES[int(rng.integers(len(SHAPES_CLASSES)))]
        radius = rng.uniform(8, 35)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        pts = _shape_polygon(kind, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        colour = _random_colour(rng)
        cv2.polylines(image, [_fixed(pts)], True, colour, 1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    for _ in range(int(rng.integers(0, 7))):
        centre = _random_point(rng, height, width)
        cv2.circle(image, centre, int(rng.integers(1, 3)), _random_colour(rng), -1, cv2.LINE_AA)


def _place_object(
    rng: np.random.Generator, image: np.ndarray, occupied: np.ndarray, boxes: list[list[float]]
) -> tuple[list[float], int] | None:
    """Draw one object touching no other: ``(box xyxy px, label)``, or None (nothing drawn)."""
    height, width = image.shape[:2]
    max_size = MAX_OBJECT_FRACTION * min(height, width)
    for _ in range(30):
        label = int(rng.integers(len(SHAPES_CLASSES)))
        # Uniform in sqrt(size): every scale shows up, but fewer tiny objects than log-uniform
        # (about 1 in 5 under 32 px instead of 1 in 3), which a small CPU-trained model needs.
        radius = 0.5 * rng.uniform(math.sqrt(MIN_OBJECT_SIZE), math.sqrt(max_size)) ** 2
        cx = rng.uniform(radius + 1, width - radius - 1)
        cy = rng.uniform(radius + 1, height - radius - 1)
        angle = rng.uniform(0, 2 * math.pi)
        alpha = _shape_alpha(SHAPES_CLASSES[label], cx, cy, radius, angle, (height, width))
        solid = alpha >= 128
        box = _tight_box(solid)
        if np.any((alpha > 0) & (occupied > 0)):
            continue
        if boxes and _max_iou(box, boxes) >= MAX_IOU:
            continue
        _blend(image, alpha, _contrasting_colour(rng, image[solid].mean(axis=0)))
        # A 2 px margin keeps later objects from touching this one.
        occupied |= cv2.dilate(solid.astype(np.uint8), np.ones((5, 5), np.uint8))
        return box, label
    return None


def _fallback_object(rng: np.random.Generator, image: np.ndarray) -> tuple[list, list]:
    """Draw a mid-sized circle at the centre; used only when random placement failed."""
    height, width = image.shape[:2]
    alpha = _shape_alpha("circle", width / 2, height / 2, 20.0, 0.0, (height, width))
    solid = alpha >= 128
    _blend(image, alpha, _contrasting_colour(rng, image[solid].mean(axis=0)))
    return [_tight_box(solid)], [0]


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Paint ``colour`` over float32 ``image`` in place with uint8 coverage ``alpha`` [H, W]."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    roi = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = (alpha[roi].astype(np.float32) / 255.0)[..., None]
    image[roi] = image[roi] * (1.0 - a) + a * colour


def _shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices ``[K, 2]`` (x, y px) of a square, triangle or star inscribed in a circle."""
    if kind == "square":
        k, radii, offset = 4, np.array([radius]), math.pi / 4
    elif kind == "triangle":
        k, radii, offset = 3, np.array([radius]), -math.pi / 2
    elif kind == "star":
        k, radii, offset = 10, np.array([radius, radius * _STAR_INNER_RATIO]), -math.pi / 2
    else:  # "circle": a 32-gon is a circle at these sizes (used for outlines only)
        k, radii, offset = 32, np.array([radius]), 0.0
    theta = angle + offset + 2 * math.pi * np.arange(k) / k
    r = np.resize(radii, k)
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _shape_alpha(
    kind: str,
    cx: float,
    cy: float,
    radius: float,
    angle: float,
    shape: tuple[int, int],
    polygon: Callable[[str, float, float, float, float], np.ndarray] = _shape_polygon,
) -> np.ndarray:
    """Anti-aliased coverage (uint8 ``[H, W]``, 0..255) of one filled shape; ``polygon`` gives
    the vertices of what is not a circle."""
    mask = np.zeros(shape, dtype=np.uint8)
    if kind == "circle":
        one = 1 << _SUBPIXEL_SHIFT
        centre = (round(cx * one), round(cy * one))
        cv2.circle(mask, centre, round(radius * one), 255, -1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    else:
        pts = _fixed(polygon(kind, cx, cy, radius, angle))
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    return mask


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float px vertices ``[K, 2]`` to cv2's fixed-point int32 ``[K, 2]``."""
    return np.rint(points * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)


def _tight_box(solid: np.ndarray) -> list[float]:
    """Tight xyxy box (pixel edges) of the True pixels of a bool ``[H, W]`` mask."""
    cols = np.flatnonzero(solid.any(axis=0))
    rows = np.flatnonzero(solid.any(axis=1))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _max_iou(box: list[float], boxes: list[list[float]]) -> float:
    """Largest IoU between one xyxy box and a list of xyxy boxes."""
    b = np.asarray(boxes, dtype=np.float64)
    iw = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return float((inter / union).max())


def _contrasting_colour(
    rng: np.random.Generator, background: np.ndarray, far: float = 110.0, luma: float = 50.0
) -> np.ndarray:
    """A random RGB colour (float32 ``[3]``) at least ``far`` from ``background`` in RGB and
    ``luma`` in brightness."""
    weights = np.array([0.299, 0.587, 0.114])
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        distant = np.linalg.norm(colour - background) >= far
        if distant and abs(float((colour - background) @ weights)) >= luma:
            return colour.astype(np.float32)
    return np.where(background < 128, 235.0, 20.0).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    r, g, b = rng.uniform(0, 255, 3)
    return float(r), float(g), float(b)


def _random_point(rng: np.random.Generator, height: int, width: int) -> tuple[int, int]:
    return int(rng.integers(0, width)), int(rng.integers(0, height))


@dataclass(frozen=True)
class ShapesVariant:
    """One kind of generated shapes dataset: ``name`` (folder prefix, word in the ``done``
    marker), ``classes`` (label ``i`` is category id ``i + 1``), ``render`` (as
    :func:`render_scene`), inclusive ranges drawn per image (quality: unless one value)."""

    name: str
    classes: tuple[str, ...]
    render: Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    side_range: tuple[int, int]
    jpeg_quality: tuple[int, int] = (95, 95)


EASY = ShapesVariant("shapes", SHAPES_CLASSES, render_scene, IMAGE_SIDE_RANGE)
"""The built-in set of ``make demo``: contrasting solid shapes, no occlusion."""


def _render_split(
    out: Path, split: str, split_code: int, num_images: int, seed: int, variant: ShapesVariant
) -> tuple[list[dict], list[dict]]:
    """Render and write one split's images; return its COCO image and annotation dicts."""
    images_dir = out / "images" / split
    images_dir.mkdir(parents=True)
    images: list[dict] = []
    annotations: list[dict] = []
    lo, hi = variant.side_range
    q_lo, q_hi = variant.jpeg_quality
    for i in tqdm(range(num_images), desc=f"{variant.name} {split}", unit="img", disable=None):
        rng = np.random.default_rng([seed, split_code, i])
        height, width = (int(v) for v in rng.integers(lo, hi + 1, 2))
        image, boxes, labels = variant.render(rng, height, width)
        quality = q_lo if q_lo == q_hi else int(rng.integers(q_lo, q_hi + 1))
        file_name = f"{i:06d}.jpg"
        bgr = np.ascontiguousarray(image[..., ::-1])
        if not cv2.imwrite(str(images_dir / file_name), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {images_dir / file_name}")
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        xywh = box_convert(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "xyxy", "xywh")
        for bbox, label in zip(xywh.tolist(), labels.tolist(), strict=True):
            annotations.append({"image_id": image_id, "category_id": label + 1, "bbox": bbox})
    return images, annotations


def generate_shapes(
    root: Path,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    variant: ShapesVariant = EASY,
) -> Path:
    """Render ``images/{train,val}/NNNNNN.jpg``, ``annotations/instances_{train,val}.json`` and
    a ``done`` marker into a temporary folder renamed to ``root``; FileExistsError if it exists."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        categories = [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(variant.classes)
        ]
        for split_code, (split, n) in enumerate((("train", num_train), ("val", num_val))):
            images, annotations = _render_split(tmp, split, split_code, n, seed, variant)
            ann_file = tmp / "annotations" / f"instances_{split}.json"
            write_coco(ann_file, images, annotations, categories)
        marker = f"{variant.name} {SHAPES_VERSION} {num_train} {num_val} {seed}\n"
        (tmp / "done").write_text(marker)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def default_shapes_root(
    num_train: int = 2000, num_val: int = 200, seed: int = 0, variant: ShapesVariant = EASY
) -> Path:
    """``$DETKIT_HOME/datasets/<variant>-<train>-<val>-s<seed>-v1``; DETKIT_HOME: ~/.cache/detkit."""
    home = Path(os.environ.get("DETKIT_HOME", "~/.cache/detkit")).expanduser()
    return home / "datasets" / f"{variant.name}-{num_train}-{num_val}-s{seed}-{SHAPES_VERSION}"


def ensure_shapes(
    root: Path | None = None,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    variant: ShapesVariant = EASY,
) -> Path:
    """The root of a finished shapes dataset (None: :func:`default_shapes_root`), generated
    if missing; safe from several processes at once (the first rename wins). FileExistsError
    when ``root`` exists but is not a finished shapes dataset."""
    if root is None:
        root = default_shapes_root(num_train, num_val, seed, variant)
    root = Path(root)
    if (root / "done").is_file():
        logger.info("%s dataset found at %s", variant.name, root)
        return root
    if root.exists():
        raise FileExistsError(f"{root} exists but has no 'done' marker; delete it to regenerate")
    logger.info(
        "generating %s dataset (%d train, %d val) in %s", variant.name, num_train, num_val, root
    )
    try:
        generate_shapes(root, num_train, num_val, seed, variant)
    except OSError:
        if not (root / "done").is_file():  # not a lost race with another process
            raise
    logger.info("%s dataset ready at %s", variant.name, root)
    return root


def shapes_split(root: Path, split: str) -> tuple[Path, Path]:
    """``(ann_file, images_dir)`` of split ``"train"`` or ``"val"`` (else ValueError)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / "images" / split


def main(argv: list[str] | None = None) -> None:
    """``python -m detkit.data.synthetic``: make sure a shapes dataset exists, print its root
    (``--val-image K``: the path of validation image ``K``, which ``make demo`` infers on)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", type=Path, default=None, help="default: under $DETKIT_HOME")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-image", type=int, default=None, metavar="K")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = ensure_shapes(args.root, args.num_train, args.num_val, args.seed)
    if args.val_image is None:
        print(root)
        return
    if not 0 <= args.val_image < args.num_val:
        parser.error(f"--val-image must be in [0, {args.num_val})")
    print(shapes_split(root, "val")[1] / f"{args.val_image:06d}.jpg")


if __name__ == "__main__":
    main()
