from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.data import (
    Batch,
    CocoDataset,
    DetectionDataset,
    EpochBatchSampler,
    LetterboxInfo,
    Sample,
    build_loader,
    build_transforms,
    collate,
    images_to_float,
    set_loader_epoch,
    shapes_split,
)

IMG_SIZE = 64


class FakeSource:
    """Images of varying sizes with 0..3 boxes each (top-level so workers can pickle it)."""

    def __init__(self, n: int = 10) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> Sample:
        rng = np.random.default_rng(index)
        height, width = 40 + 7 * index, 90 - 3 * index
        k = index % 4
        x1 = rng.uniform(0, width / 2, k)
        y1 = rng.uniform(0, height / 2, k)
        boxes = np.stack([x1, y1, x1 + width / 3, y1 + height / 3], axis=1).astype(np.float32)
        return Sample(
            image=rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
            boxes=boxes.reshape(-1, 4),
            labels=np.arange(k, dtype=np.int64) % 3,
            image_id=100 + index,
            path=f"img{index}.jpg",
        )


def test_getitem_types_and_shapes() -> None:
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=False))
    assert len(dataset) == 10
    for i in (0, 3):
        item = dataset[i]
        assert item["image"].shape == (3, IMG_SIZE, IMG_SIZE)
        assert item["image"].dtype == torch.uint8
        assert item["boxes"].dtype == torch.float32 and item["boxes"].shape == (i % 4, 4)
        assert item["labels"].dtype == torch.int64 and item["labels"].shape == (i % 4,)
        assert item["image_id"] == 100 + i and item["path"] == f"img{i}.jpg"
        assert isinstance(item["info"], LetterboxInfo)
    # CHW is the HWC letterboxed image, channels unchanged.
    sample = FakeSource().load(3)
    image, _, _, _ = build_transforms(IMG_SIZE, train=False)(
        sample.image, sample.boxes, sample.labels
    )
    np.testing.assert_array_equal(dataset[3]["image"].permute(1, 2, 0).numpy(), image)


def test_collate_targets_and_batch_indices() -> None:
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=False))
    items = [dataset[i] for i in (1, 0, 3, 2)]  # 1, 0, 3, 2 boxes
    batch = collate(items)
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.images.shape == (4, 3, IMG_SIZE, IMG_SIZE) and batch.images.dtype == torch.uint8
    assert batch.targets.shape == (6, 6) and batch.targets.dtype == torch.float32
    assert batch.targets[:, 0].tolist() == [0, 2, 2, 2, 3, 3]
    assert batch.targets[:, 1].tolist() == [0, 0, 1, 2, 0, 1]
    torch.testing.assert_close(batch.targets[1:4, 2:], items[2]["boxes"])
    assert batch.image_ids == [101, 100, 103, 102]
    assert batch.paths == ["img1.jpg", "img0.jpg", "img3.jpg", "img2.jpg"]
    assert batch.infos == [item["info"] for item in items]
    empty = collate([dataset[0], dataset[4]])
    assert empty.targets.shape == (0, 6) and empty.targets.dtype == torch.float32
    # Pixels stay in the channel-last memory the transform wrote: no worker-side transpose.
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    for k, item in enumerate(items):
        assert torch.equal(batch.images[k], item["image"])


def test_batch_to_and_pin_memory_return_new_batches() -> None:
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=False))
    batch = collate([dataset[1], dataset[2]])
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.targets, batch.targets)
    assert moved.image_ids == batch.image_ids
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert pinned.images.is_pinned() and pinned.targets.is_pinned()
        assert batch.to("cuda", non_blocking=True).images.is_cuda


def test_images_to_float() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    out = images_to_float(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    assert images.flatten().tolist() == [0, 51, 255]
    with pytest.raises(TypeError, match="uint8"):
        images_to_float(out)
    hwc = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    chw = hwc.permute(0, 3, 1, 2)  # how batches arrive
    plain, last = images_to_float(chw), images_to_float(chw, torch.channels_last)
    assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain, chw.contiguous().float() / 255, rtol=0, atol=0)
    assert torch.equal(plain, last)


def _epochs(workers: int, seed: int) -> list[list[tuple[list[int], torch.Tensor, torch.Tensor]]]:
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=True))
    loader = build_loader(dataset, batch_size=3, train=True, workers=workers, seed=seed)
    epochs = []
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        epochs.append([(b.image_ids, b.images, b.targets) for b in loader])
    return epochs


def _same(a: list, b: list) -> bool:
    return all(
        ids_a == ids_b and torch.equal(im_a, im_b) and torch.equal(t_a, t_b)
        for (ids_a, im_a, t_a), (ids_b, im_b, t_b) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_is_deterministic_given_seed(workers: int) -> None:
    first, second, other = _epochs(workers, 7), _epochs(workers, 7), _epochs(workers, 8)
    assert len(first[0]) == 3  # 10 images, batch 3, drop_last
    for epoch_a, epoch_b in zip(first, second, strict=True):
        assert _same(epoch_a, epoch_b)
    assert not _same(first[0], other[0])
    assert not _same(first[0], first[1])  # a new order and new augmentations each epoch


def test_batches_do_not_depend_on_worker_count() -> None:
    for epoch_a, epoch_b in zip(_epochs(0, 5), _epochs(2, 5), strict=True):
        assert _same(epoch_a, epoch_b)


def test_resume_mid_epoch_sees_the_same_remaining_batches() -> None:
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=True))
    loader = build_loader(dataset, batch_size=3, train=True, workers=0, seed=1)
    set_loader_epoch(loader, 4)
    full = [(b.image_ids, b.images, b.targets) for b in loader]
    fresh = build_loader(dataset, batch_size=3, train=True, workers=0, seed=1)
    set_loader_epoch(fresh, 4, start_batch=1)
    assert _same(full[1:], [(b.image_ids, b.images, b.targets) for b in fresh])
    assert len(list(fresh)) == 3  # the skip applies to one pass only


@pytest.mark.parametrize("n", [10, 11, 12])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(n: int) -> None:
    shards = [
        [
            i
            for batch in EpochBatchSampler(n, 2, True, seed=3, rank=r, world_size=3)
            for _, i in batch
        ]
        for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1
    assert set().union(*shards) == set(range(n))
    if n % 3 == 0:
        assert sum(len(s) for s in shards) == n


@pytest.mark.parametrize("n", [48, 50])
def test_a_global_batch_holds_the_same_images_on_1_2_or_4_processes(n: int) -> None:
    """Global batch k of an epoch (rank r takes every N-th index of the one permutation) is
    the same set of images whatever the number of processes, so a run resumed on another
    number of GPUs goes on with the batches it would have seen."""

    def global_batches(world: int) -> list[set[int]]:
        ranks = [
            list(EpochBatchSampler(n, 8 // world, True, seed=5, drop_last=True, rank=r,
                                   world_size=world))
            for r in range(world)
        ]  # fmt: skip
        return [{i for rank in ranks for _, i in rank[k]} for k in range(len(ranks[0]))]

    one = global_batches(1)
    assert len(one) == n // 8
    for world in (2, 4):
        assert global_batches(world)[: len(one)] == one


def test_shm_too_small_for_the_batches_in_flight(monkeypatch) -> None:
    """Docker's 64 MiB /dev/shm against 8 workers x 2 batches of 16 at 640 px (~300 MiB)."""
    import shutil
    from collections import namedtuple

    from detkit.data.loader import shm_shortfall

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 << 20, 0, 64 << 20))
    text = shm_shortfall(8, 16, 640)
    assert text.startswith("/dev/shm has 64 MiB free, and 8 loader workers x 2 prefetched")
    assert "need about 300 MiB" in text and "--shm-size" in text
    assert shm_shortfall(8, 16, 640, processes=8).count("x 8 processes") == 1
    assert shm_shortfall(0, 16, 640) == "" and shm_shortfall(1, 2, 64) == ""


def test_the_loader_seed_wins_without_writing_into_the_dataset() -> None:
    transform = build_transforms(IMG_SIZE, train=True)
    dataset = DetectionDataset(FakeSource(), transform, seed=0)
    loader = build_loader(dataset, batch_size=3, train=True, workers=0, seed=5)
    assert dataset.seed == 0 and loader.dataset.seed == 5  # the caller's object is untouched
    own = build_loader(DetectionDataset(FakeSource(), transform, seed=5), 3, True, 0, seed=5)
    assert loader.dataset.source is dataset.source  # a shallow copy: nothing is duplicated
    batches = [(b.image_ids, b.images, b.targets) for b in loader]
    assert _same(batches, [(b.image_ids, b.images, b.targets) for b in own])


def test_eval_loader_keeps_order_and_last_batch() -> None:
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=False))
    loader = build_loader(dataset, batch_size=4, train=False, workers=0, seed=0)
    assert [len(b) for b in loader] == [4, 4, 2]
    assert [i for b in loader for i in b.image_ids] == list(range(100, 110))


def test_shapes_through_the_loader(tiny_shapes: Path) -> None:
    source = CocoDataset(*shapes_split(tiny_shapes, "train"))
    dataset = DetectionDataset(source, build_transforms(128, train=True))
    batch = next(iter(build_loader(dataset, batch_size=4, train=True, workers=0, seed=0)))
    assert batch.images.shape == (4, 3, 128, 128)
    assert len(batch.targets) > 0
    assert (batch.targets[:, 2:] >= 0).all() and (batch.targets[:, 2:] <= 128).all()


def test_only_worker_processes_keep_freed_memory(monkeypatch) -> None:
    import ctypes
    import platform

    import detkit.data.loader as loader_module

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert loader_module.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr(loader_module, "keep_freed_memory", lambda: calls.append(1))
    dataset = DetectionDataset(FakeSource(), build_transforms(IMG_SIZE, train=False))
    build_loader(dataset, 2, train=False, workers=0, seed=0)
    assert calls == []  # the caller's process is not retuned, even when loading happens in it
    build_loader(dataset, 2, train=False, workers=2, seed=0)
    assert calls == []  # ... each worker does it in seed_worker
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # a worker's, put back by undo()
    loader_module.seed_worker(0)
    for s, handler in handlers.items():
        signal.signal(s, handler)
    assert calls == [1]
    monkeypatch.undo()

    def no_libc(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert loader_module.keep_freed_memory() is False  # musl, macOS: nothing changed


class OpenCVThreadsDataset(DetectionDataset):
    """Items whose ``path`` says how many threads OpenCV runs with where they were made."""

    def __getitems__(self, keys):
        import cv2

        items = super().__getitems__(keys)
        return [item | {"path": str(cv2.getNumThreads())} for item in items]


def test_workers_are_capped_by_the_cores_and_run_opencv_on_one_thread(monkeypatch) -> None:
    """(#20) ``workers`` defaults to 8 and is capped by the cores per local process, as
    Ultralytics caps it; every worker runs OpenCV on one thread (set before they fork) while
    the calling process keeps its own count."""
    import os

    import cv2

    from detkit.config import TrainConfig
    from detkit.data.loader import usable_workers

    cores = len(os.sched_getaffinity(0))
    assert TrainConfig().workers == 8
    assert usable_workers(8, local_processes=1) == min(8, cores)
    assert usable_workers(3, local_processes=cores) == min(3, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more ranks than cores: none
    assert usable_workers(8) == 0
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    dataset = OpenCVThreadsDataset(FakeSource(), build_transforms(IMG_SIZE, train=False))
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)  # the caller's own choice, which the workers must not inherit
    try:
        with build_loader(dataset, 5, train=False, workers=64, seed=0) as loader:
            assert loader.num_workers == min(64, cores)
            paths = [p for batch in loader for p in batch.paths]
        assert paths == ["1"] * 10 and cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)
