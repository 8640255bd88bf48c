"""Augmentation through the dataset: mosaic (seeded, switched off by epoch), the full training
pipeline keeps labels on their objects, the RAM cache changes nothing, config -> Augment."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from detkit.config import load_config
from detkit.config.build import build_augment, build_detection_dataset
from detkit.data import (
    Augment,
    DetectionDataset,
    ImageCache,
    Sample,
    build_loader,
    build_transforms,
    letterbox_image,
    set_loader_epoch,
)
from detkit.data.augment import (
    PAD_VALUE,
    HSVShift,
    ZoomShift,
    augmentation_steps,
    colour_matrix,
    zoom_span,
)

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
SIZE = 96


def background(index: int) -> int:
    """The grey level of source image ``index`` (below the padding grey, 114)."""
    return 30 + 7 * index


class ColourSource:
    """Images of varying size, each with up to 4 rectangles filled with their label's colour on
    a dark background (top-level so worker processes can pickle it)."""

    def __init__(self, n: int = 12) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def image_size(self, index: int) -> tuple[int, int]:
        return 90 + 11 * index, 150 - 5 * index

    def load(self, index: int) -> Sample:
        h, w = self.image_size(index)
        rng = np.random.default_rng(index)
        image = np.full((h, w, 3), background(index), np.uint8)
        boxes, labels = [], []
        for label in range(index % 5):  # index % 5 == 0: a negative
            x1, y1 = (label % 2) * w / 2 + 4, (label // 2) * h / 2 + 4
            x2 = x1 + rng.uniform(12, w / 2 - 8)
            y2 = y1 + rng.uniform(12, h / 2 - 8)
            image[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = COLOURS[label]
            boxes.append([int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))])
            labels.append(label)
        return Sample(
            image=image,
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            labels=np.array(labels, np.int64),
            image_id=index,
            path=f"{index}.png",
        )


FULL = Augment(mosaic=1.0, degrees=5.0, blur=0.3, noise=0.3, scale=(0.6, 1.4), translate=0.15)


def _check_labels_on_objects(item: dict) -> int:
    image = item["image"].permute(1, 2, 0).numpy().astype(int)
    boxes, labels = item["boxes"].numpy(), item["labels"].numpy()
    assert image.shape == (SIZE, SIZE, 3) and len(boxes) == len(labels)
    assert (boxes >= 0).all() and (boxes <= SIZE).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        centre = image[int((y1 + y2) / 2), int((x1 + x2) / 2)]
        # Colour jitter, blur and noise move colours, not the dominant channel pattern.
        assert np.abs(centre - COLOURS[label]).max() < 140, (centre, label)
        assert (centre >= 128).tolist() == (COLOURS[label] >= 128).tolist()
    return len(boxes)


def test_full_augmentation_keeps_every_label_on_its_object() -> None:
    dataset = DetectionDataset(ColourSource(), build_transforms(SIZE, True, augment=FULL), seed=3)
    seen = sum(
        _check_labels_on_objects(dataset[(epoch, i)]) for epoch in range(4) for i in range(12)
    )
    assert seen > 60


def _sources_shown(item: dict) -> set[int]:
    """Indices of the source images whose background fills at least 40 pixels of the item."""
    image = item["image"]
    grey = (image[0] == image[1]) & (image[1] == image[2])
    levels, counts = torch.unique(image[0][grey], return_counts=True)
    shown = {int(v) for v, c in zip(levels, counts, strict=True) if c >= 40}
    return {i for i in range(12) if background(i) in shown}


def test_mosaic_is_seeded_per_item_and_switched_off_by_the_epoch_in_the_key() -> None:
    augment = Augment(mosaic=1.0, mosaic_off_epoch=2, affine=0.0, hflip=0.0, hsv=(0, 0, 0))
    make = lambda: DetectionDataset(ColourSource(), build_transforms(SIZE, True, augment=augment))  # noqa: E731
    a, b = make(), make()
    b[(0, 5)]  # loading other items first changes nothing
    for key in [(0, 3), (1, 3), (0, 7), (2, 3), (5, 7)]:
        assert torch.equal(a[key]["image"], b[key]["image"])
        assert torch.equal(a[key]["boxes"], b[key]["boxes"])
    # Before the switch-off an item is a mosaic: it shows the backgrounds of several images.
    mosaics = [a[(e, 1)] for e in (0, 1)]
    plain = [a[(e, 1)] for e in (2, 3, 9)]
    assert all(len(_sources_shown(m)) >= 2 for m in mosaics)
    assert all(_sources_shown(p) == {1} for p in plain)
    letterboxed, _ = letterbox_image(ColourSource().load(1).image, SIZE)
    assert torch.equal(plain[0]["image"], torch.from_numpy(letterboxed).permute(2, 0, 1))
    assert augment.mosaic_active(1) and not augment.mosaic_active(2)


def _epochs(workers: int, cache: bool = False) -> list[list[tuple]]:
    source = ColourSource()
    transform = build_transforms(SIZE, True, augment=Augment(mosaic=0.5, mosaic_off_epoch=1))
    cached = ImageCache(source, SIZE, progress=False) if cache else None
    dataset = DetectionDataset(source, transform, cache=cached)
    loader = build_loader(dataset, batch_size=4, train=True, workers=workers, seed=9)
    out = []
    for epoch in (0, 1):
        set_loader_epoch(loader, epoch)
        out.append([(b.image_ids, b.images, b.targets) for b in loader])
    return out


def _same(a: list, b: list) -> bool:
    return all(
        x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
        for ea, eb in zip(a, b, strict=True)
        for x, y in zip(ea, eb, strict=True)
    )


def test_mosaic_batches_do_not_depend_on_workers_and_resume_mid_epoch() -> None:
    zero, two = _epochs(0), _epochs(2)
    assert _same(zero, two)
    source = ColourSource()
    transform = build_transforms(SIZE, True, augment=Augment(mosaic=0.5, mosaic_off_epoch=1))
    loader = build_loader(DetectionDataset(source, transform), 4, train=True, workers=0, seed=9)
    set_loader_epoch(loader, 0, start_batch=1)
    resumed = [(b.image_ids, b.images, b.targets) for b in loader]
    assert _same([zero[0][1:]], [resumed])


class CountingSource(ColourSource):
    """A :class:`ColourSource` that counts its decodes."""

    def __init__(self, n: int = 12) -> None:
        super().__init__(n)
        self.loads = 0

    def load(self, index: int) -> Sample:
        self.loads += 1
        return super().load(index)


def test_a_batch_of_mosaics_decodes_each_image_once_and_equals_its_items() -> None:
    """The loader's ``__getitems__`` shares the batch's decoded images among its mosaics
    (partners are drawn from the batch), and each item is what its key alone makes (#20)."""
    augment = Augment(mosaic=1.0, affine=0.0, hflip=0.5, hsv=(0, 0, 0))
    source = CountingSource()
    dataset = DetectionDataset(source, build_transforms(SIZE, True, augment=augment), seed=4)
    keys = [(3, i) for i in (7, 2, 11, 5, 0, 9)]
    batch = dataset.__getitems__(keys)
    assert source.loads == len(keys)  # one decode per image, not four per mosaic
    pool = tuple(i for _, i in keys)
    assert all(_sources_shown(item) <= set(pool) for item in batch)  # partners from the batch
    assert sum(len(_sources_shown(item)) >= 2 for item in batch) >= 4  # and mosaics they are
    source.loads = 0
    for key, item in zip(keys, batch, strict=True):
        alone = dataset[(*key, pool)]
        assert torch.equal(alone["image"], item["image"])
        assert torch.equal(alone["boxes"], item["boxes"]) and torch.equal(
            alone["labels"], item["labels"]
        )
    # item by item, every mosaic decodes its partners again (16 here: some draws repeat)
    assert source.loads >= 2 * len(keys)


def test_ram_cache_changes_no_pixel() -> None:
    for ea, eb in zip(_epochs(0), _epochs(0, cache=True), strict=True):
        for (ids_a, im_a, t_a), (ids_b, im_b, t_b) in zip(ea, eb, strict=True):
            assert ids_a == ids_b and torch.equal(im_a, im_b)
            torch.testing.assert_close(t_a, t_b, rtol=0, atol=1e-4)  # float32 rounding only
    source = ColourSource(5)
    cache = ImageCache(source, SIZE, progress=False)
    assert len(cache) == 5 and cache.nbytes > 0
    plain = DetectionDataset(source, build_transforms(SIZE, False))
    cached = DetectionDataset(source, build_transforms(SIZE, False), cache=cache)
    for i in range(5):
        a, b = plain[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and a["info"] == b["info"]
        torch.testing.assert_close(a["boxes"], b["boxes"])
        np.testing.assert_allclose(a["info"].to_orig(a["boxes"]), source.load(i).boxes, atol=1e-3)
    assert cache.load(1)[1] == source.image_size(1)


def test_augment_from_config_and_evaluation_is_letterbox_only() -> None:
    cfg = load_config(
        overrides=["epochs=10", "close_mosaic=3", "mosaic=0.25", "hflip=0.1", "degrees=4",
                   "aug_scale=[0.5,1.5]", "hsv_v=0", "blur=0.2", "min_box_area=9"]
    )  # fmt: skip
    augment = build_augment(cfg)
    assert augment.mosaic == 0.25 and augment.mosaic_off_epoch == 7 and augment.hflip == 0.1
    assert augment.scale == (0.5, 1.5) and augment.hsv == (10.0, 30.0, 0.0)
    assert augment.degrees == 4 and augment.blur == 0.2 and augment.min_area == 9
    assert build_augment(load_config(overrides=["close_mosaic=0"])).mosaic_off_epoch is None
    source = ColourSource(3)
    cfg.train.img_size = SIZE
    val = build_detection_dataset(cfg, source, train=False)
    for epoch in (0, 4):
        item = val[(epoch, 2)]
        expected, info = letterbox_image(source.load(2).image, SIZE)
        assert torch.equal(item["image"], torch.from_numpy(expected).permute(2, 0, 1))
        assert item["info"] == info
    train = build_detection_dataset(cfg, source, train=True)
    assert train.transform.augment == augment and train.cache is None
    with pytest.raises(ValueError, match="aug_scale"):
        build_augment(load_config(overrides=["aug_scale=[0.5]"]))


@pytest.mark.parametrize(
    ("zoom", "shift"),
    [(1.0, 0.0), (0.5, 0.0), (1.5, 0.0), (0.75, 13.0), (1.25, -21.5), (0.6, 80.0)],
)
def test_zoom_shift_moves_boxes_with_their_pixels(zoom: float, shift: float) -> None:
    # A white rectangle on black: after the step its box must frame the white pixels exactly
    # (to the one-pixel blur of the bilinear edge), also when it is cut by the border.
    side, fill = 120, 114
    image = np.zeros((side, side, 3), np.uint8)
    image[30:72, 44:90] = 255
    box = np.array([[44.0, 30.0, 90.0, 72.0]]) / side
    step = ZoomShift(fill=fill, p=1.0)
    x_map, y_map = zoom_span(side, zoom, shift), zoom_span(side, zoom, -shift / 2)
    out = step.apply(image, x_map=x_map, y_map=y_map)
    moved = step.apply_to_bboxes(box, x_map=x_map, y_map=y_map, shape=(side, side)) * side
    x1, y1, x2, y2 = np.clip(moved[0], 0, side)
    bright = out[..., 0] > 128
    assert (out[..., 0] == out[..., 2]).all() and out.shape == image.shape
    if x2 - x1 < 1 or y2 - y1 < 1:
        assert not bright.any()
        return
    ys, xs = np.nonzero(bright)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1
    # Outside the shifted, zoomed source there is only the fill.
    _lo, _hi, d0, d1 = x_map
    if d0 > 0:
        assert (out[:, : d0 - 1] == fill).all()
    if d1 < side:
        assert (out[:, d1 + 1 :] == fill).all()


def test_zoom_span_matches_the_continuous_map_and_handles_an_empty_view() -> None:
    for side, zoom, shift in [(100, 2.0, 0.0), (96, 0.5, 0.0), (320, 1.3, -40.0), (64, 0.77, 9.5)]:
        lo, hi, d0, d1 = zoom_span(side, zoom, shift)
        offset = (1 - zoom) * side / 2 + shift
        assert 0 <= lo < hi <= side
        assert abs(d0 - (zoom * lo + offset)) <= 0.5 and abs(d1 - (zoom * hi + offset)) <= 0.5
        assert (d0 <= 1 and d1 >= side - 1) or lo == 0 or hi == side  # the view is covered
    lo, hi, _, _ = zoom_span(50, 0.5, 200.0)  # shifted wholly out of the image
    assert hi <= lo
    image = np.full((50, 50, 3), 9, np.uint8)
    empty = ZoomShift(p=1.0).apply(image, x_map=zoom_span(50, 0.5, 200.0), y_map=(0, 50, 0, 50))
    assert (empty == PAD_VALUE).all()


def test_colour_matrix_keeps_greys_and_turns_hues() -> None:
    greys = np.repeat(np.arange(0, 256, 15, dtype=np.uint8)[:, None, None], 3, axis=2)
    assert np.array_equal(cv2.transform(greys, colour_matrix(17.0, 35.0, 0.0)), greys)
    brighter = cv2.transform(greys[1:-2], colour_matrix(0.0, 0.0, 20.0)).astype(int)
    assert np.array_equal(brighter, greys[1:-2].astype(int) + 20)
    red = np.array([[[200, 0, 0]]], np.uint8)
    assert cv2.transform(red, colour_matrix(60.0, 0.0, 0.0)).tolist() == [[[0, 200, 0]]]
    hue = cv2.cvtColor(cv2.transform(red, colour_matrix(10.0, 0.0, 0.0)), cv2.COLOR_RGB2HSV)
    assert 6 <= hue[0, 0, 0] <= 14  # about +10 OpenCV units (20 degrees): towards yellow
    pale = np.array([[[160, 100, 100]]], np.uint8)
    sat = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[0, 0, 1]  # noqa: E731
    assert sat(cv2.transform(pale, colour_matrix(0.0, 40.0, 0.0))) > sat(pale)
    assert sat(cv2.transform(pale, colour_matrix(0.0, -40.0, 0.0))) < sat(pale)
    assert (cv2.transform(pale, colour_matrix(0.0, -255.0, 0.0)) == 120).all()  # all grey


def test_zoom_shift_is_the_default_affine_and_rotation_uses_the_general_warp() -> None:
    steps = augmentation_steps(Augment())
    assert isinstance(steps[0], ZoomShift) and isinstance(steps[-1], HSVShift)
    assert isinstance(augmentation_steps(Augment(degrees=5.0))[0], A.Affine)
    assert not any(isinstance(s, ZoomShift) for s in augmentation_steps(Augment(affine=0.0)))


def test_ram_cache_refuses_what_would_not_fit_counting_every_ddp_rank(monkeypatch) -> None:
    import detkit.data.cache as cache_module

    source = ColourSource(4)  # at SIZE 96: at most 4 x 96 x 96 x 3 = 110592 bytes
    needed = sum(
        round(h * (SIZE / max(h, w))) * round(w * (SIZE / max(h, w))) * 3
        for h, w in map(source.image_size, range(4))
    )
    monkeypatch.setattr(cache_module, "_available_memory", lambda: int(needed / 0.7) + 64)
    assert len(ImageCache(source, SIZE, progress=False, copies=1)) == 4
    with pytest.raises(ValueError, match="in each of 2 processes"):
        ImageCache(source, SIZE, progress=False, copies=2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # what torchrun sets
    with pytest.raises(ValueError, match=r"in each of 3 processes.*cache_images=false"):
        ImageCache(source, SIZE, progress=False)
    monkeypatch.setattr(cache_module, "_available_memory", lambda: None)  # unknown: no check
    assert len(ImageCache(source, SIZE, progress=False)) == 4
