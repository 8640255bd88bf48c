"""Time the data pipeline against decoding alone (the floor), in the same run.

Run from the repository root: ``python bench/bench_data.py [--images N] [--repeats R]``. It writes
N synthetic 640x480 JPEG scenes (quality 95, 1-6 objects) into a temporary COCO dataset and
times full passes over it with ``build_loader`` (batch 16) for each pipeline, input size (320,
640) and worker count (0, 2):

- ``decode``: ``CocoDataset.load`` only (JPEG decode to RGB + the index lookup): the floor;
- ``eval``: + letterbox (what evaluation and inference do);
- ``train``: + the default training augmentation (affine p=0.5, flip, HSV jitter);
- ``train full``: the ``configs/data/coco.yaml`` augmentation without mosaic (affine p=0.5 with
  zoom 0.5-1.5, flip, stronger HSV, blur p=0.01);
- ``+ mosaic``: the same with mosaic p=1 (every item a mosaic of four images; the partners
  come from the item's batch, decoded once per batch);
- ``+ mosaic, RAM``: the same from the RAM cache (no decoding; filling it is not timed).

Each row is the median of R timed passes after one warm-up pass (which also starts the worker
processes); pipelines alternate within each repeat so that load on the machine hits all alike.
The ratio is the row's time per image over ``decode``'s at the same size and worker count.
``img/CPU-s`` is images per CPU second of the loading processes (the main process and its
workers, from ``/proc``): what one worker core delivers, which a busy machine changes far less
than the wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run without installing detkit

from detkit.data import (
    Augment,
    CocoDataset,
    DetectionDataset,
    ImageCache,
    build_loader,
    build_transforms,
    set_loader_epoch,
)
from detkit.data.coco import write_coco
from detkit.data.synthetic import render_scene

BATCH = 16
FULL = Augment(scale=(0.5, 1.5), hsv=(10.0, 40.0, 30.0), blur=0.01)
MOSAIC = Augment(scale=(0.5, 1.5), hsv=(10.0, 40.0, 30.0), blur=0.01, mosaic=1.0)


class DecodeOnly:
    """``transform`` stand-in: the decoded image is dropped (no resize, nothing to copy)."""

    img_size = 1
    train = False

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        return np.zeros((1, 1, 3), np.uint8), boxes, labels, None

    def letterboxed(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        return np.zeros((1, 1, 3), np.uint8), boxes, labels

    def finish(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        return image, boxes, labels


def make_dataset(root: Path, n: int) -> CocoDataset:
    """``n`` 640x480 scenes as JPEG (quality 95) in COCO layout."""
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        image, boxes, labels = render_scene(np.random.default_rng([7, i]), 480, 640)
        cv2.imwrite(
            str(root / "images" / f"{i}.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 480, "width": 640})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            anns.append(
                {"image_id": i + 1, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            )
    cats = [{"id": k + 1, "name": str(k)} for k in range(4)]
    write_coco(root / "ann.json", images, anns, cats)
    return CocoDataset(root / "ann.json", root / "images", cache_dir=root / "cache")


def pipelines(source: CocoDataset, size: int) -> dict[str, DetectionDataset]:
    cache = ImageCache(source, size, progress=False)
    return {
        "decode": DetectionDataset(source, DecodeOnly()),
        "eval": DetectionDataset(source, build_transforms(size, train=False)),
        "train": DetectionDataset(source, build_transforms(size, train=True)),
        "train full": DetectionDataset(source, build_transforms(size, True, augment=FULL)),
        "+ mosaic": DetectionDataset(source, build_transforms(size, True, augment=MOSAIC)),
        "+ mosaic, RAM": DetectionDataset(
            source, build_transforms(size, True, augment=MOSAIC), cache=cache
        ),
    }


def collate_count(items: list) -> int:
    return len(items)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (Linux ``/proc``; 0 where unreadable)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed_pass(loader, epoch: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the loading processes) per image of one pass."""
    set_loader_epoch(loader, epoch)
    it = iter(loader)  # persistent workers: started by the warm-up pass
    workers = [w.pid for w in getattr(it, "_workers", [])]
    pids = [os.getpid(), *workers]
    start, cpu = time.perf_counter(), cpu_seconds(pids)
    seen = sum(len(batch) if isinstance(batch, list) else batch for batch in it)
    n = max(seen, 1)
    return (time.perf_counter() - start) / n, (cpu_seconds(pids) - cpu) / n


def loader_for(dataset: DetectionDataset, workers: int):
    loader = build_loader(dataset, BATCH, train=False, workers=workers, seed=0)
    loader.collate_fn = collate_count  # time producing items, not stacking them
    return loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, opencv {cv2.__version__} ({cv2.getNumThreads()} threads), "
        f"{os.cpu_count()} CPUs, {platform.machine()}, load average {load}, "
        f"{args.images} images 640x480 JPEG, batch {BATCH}, {args.repeats} repeats"
    )
    header = f"| {'pipeline':<14} | {'size':>4} | {'workers':>7} | {'img/s':>7} | {'ms/img':>7} | {'x decode':>8} | {'img/CPU-s':>9} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        source = make_dataset(Path(tmp), args.images)
        for size in args.sizes:
            datasets = pipelines(source, size)
            for workers in args.workers:
                loaders = {name: loader_for(d, workers) for name, d in datasets.items()}
                times: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
                for loader in loaders.values():
                    timed_pass(loader, 0)  # warm-up: starts the persistent workers
                for repeat in range(args.repeats):
                    for name, loader in loaders.items():
                        times[name].append(timed_pass(loader, repeat + 1))
                floor = statistics.median(w for w, _ in times["decode"])
                for name, values in times.items():
                    t = statistics.median(w for w, _ in values)
                    cpu = statistics.median(c for _, c in values)
                    print(
                        f"| {name:<14} | {size:>4} | {workers:>7} | {1 / t:>7.1f} | "
                        f"{1000 * t:>7.2f} | {t / floor:>8.2f} | "
                        f"{f'{1 / cpu:.1f}' if cpu > 0 else 'n/a':>9} |"
                    )
                for loader in loaders.values():
                    loader.close()
                del loaders


if __name__ == "__main__":
    main()
