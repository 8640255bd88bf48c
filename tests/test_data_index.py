"""The checked split as arrays (``detkit.data.index``): cached once, opened again without parsing,
probing or decoding, checked again whenever anything it rests on changes, and shared by loader
workers without a per-image Python object to copy."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import detkit.data.coco as coco_module
import detkit.data.source as source_module
from detkit.data.coco import CocoDataset
from detkit.data.index import cache_folder


def write_coco_split(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` 24x32 JPEGs with 0-4 boxes each (one crowd box in every fifth image, some boxes
    partly outside, one duplicate), as a COCO json; returns ``(json, images folder)``."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        pixels = np.full((24, 32, 3), (i * 7) % 255, np.uint8)
        assert cv2.imwrite(str(images_dir / f"{i}.jpg"), pixels)
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "height": 24, "width": 32})
        for k in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 28), rng.uniform(0, 20)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i,
                         "category_id": int(rng.choice([3, 8])),
                         "bbox": [x, y, float(rng.uniform(2, 10)), float(rng.uniform(2, 8))],
                         "iscrowd": int(i % 5 == 0 and k == 0)})  # fmt: skip
    anns.append({**anns[0], "id": len(anns) + 1})  # an exact duplicate box
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}]}  # fmt: skip
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(doc))
    return ann_file, images_dir


def served(split: CocoDataset) -> dict:
    """Everything a split serves, as plain data."""
    return {
        "ids": split.image_ids,
        "names": split.class_names,
        "cats": split.cat_ids,
        "gt": split.gt_file,
        "report": split.report.to_dict(),
        "items": [
            (split.image_size(i), split.file_name(i), split.orientation(i),
             *(a.tolist() for a in split.targets(i)), *(a.tolist() for a in split.ignored(i)),
             *(None if a is None else a.tolist() for a in split.areas(i)))
            for i in range(len(split))
        ],
    }  # fmt: skip


def refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a cached open parsed, probed or decoded")


def test_a_cached_open_serves_the_same_split_without_parsing_probing_or_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, images = write_coco_split(tmp_path, 30)
    first = CocoDataset(ann, images, cache_dir=tmp_path / "cache")
    assert not first.cached
    assert first.report.count("box_duplicate") == 1 and first.report.ignored > 0
    monkeypatch.setattr(coco_module, "read_coco_json", refuse)
    monkeypatch.setattr(source_module, "probe_image", refuse)
    monkeypatch.setattr(source_module, "decode_problems", refuse)
    again = CocoDataset(ann, images, name="train (coco)", cache_dir=tmp_path / "cache")
    assert again.cached and again.report.name == "train (coco)"
    assert served(again) | {"report": None} == served(first) | {"report": None}
    assert again.report.to_dict() | {"name": ""} == first.report.to_dict() | {"name": ""}
    for i in (0, 7, 29):
        a, b = first.load(i), again.load(i)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
        assert a.image_id == b.image_id and a.path == b.path


def _edit_annotation(ann: Path, images: Path) -> None:
    doc = json.loads(ann.read_text())
    doc["annotations"][1]["bbox"] = [1.0, 1.0, 5.0, 5.0]
    ann.write_text(json.dumps(doc))


def _rewrite_image_in_place(ann: Path, images: Path) -> None:
    """New pixels, same size and mtime: only the inode's ctime tells."""
    path = images / "3.jpg"
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def _delete_image(ann: Path, images: Path) -> None:
    (images / "5.jpg").unlink()


def _edit_cache_record(ann: Path, images: Path) -> None:
    (meta,) = (ann.parent / "cache" / "splits").glob("*/meta.json")
    record = json.loads(meta.read_text())
    record["meta"]["report"]["kept"] = 1
    meta.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "change", [_edit_annotation, _rewrite_image_in_place, _delete_image, _edit_cache_record]
)
def test_the_split_is_checked_again_when_what_its_cache_rests_on_changes(
    tmp_path: Path, change
) -> None:
    ann, images = write_coco_split(tmp_path, 12)
    first = CocoDataset(ann, images, cache_dir=tmp_path / "cache")
    change(ann, images)
    again = CocoDataset(ann, images, cache_dir=tmp_path / "cache")
    assert not again.cached
    if change is _delete_image:
        assert again.report.count("image_missing") == 1 and len(again) == len(first) - 1
    if change is _edit_annotation:
        assert served(again)["items"] != served(first)["items"]
    # the new content replaced the old one's cache: one folder per split, read next time
    assert len(list((tmp_path / "cache" / "splits").iterdir())) == 1
    assert CocoDataset(ann, images, cache_dir=tmp_path / "cache").cached


def test_other_check_settings_have_their_own_cache(tmp_path: Path) -> None:
    ann, images = write_coco_split(tmp_path, 6)
    CocoDataset(ann, images, cache_dir=tmp_path / "cache")
    small = CocoDataset(ann, images, cache_dir=tmp_path / "cache", min_image_side=30)
    assert not small.cached and len(small) == 0 and small.report.count("image_too_small") == 6


def test_a_cache_that_cannot_be_written_costs_only_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ann, images = write_coco_split(tmp_path, 6)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    split = CocoDataset(ann, images, cache_dir=tmp_path / "cache")
    assert len(split) == 6 and "could not cache the checked split" in caplog.text
    assert not list((tmp_path / "cache" / "splits").glob("*"))  # nothing half-written
    monkeypatch.undo()
    assert not CocoDataset(ann, images, cache_dir=tmp_path / "cache").cached


def _tracked(root: object) -> int:
    """Garbage-collected objects reachable from ``root`` (classes and modules not followed):
    what a collection in a forked worker writes to, copying the pages that hold them."""
    seen, todo = set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type | type(os)):
            continue
        seen.add(id(obj))
        todo += [r for r in gc.get_referents(obj) if gc.is_tracked(r)]
    return len(seen)


def test_a_split_holds_no_python_object_per_image(tmp_path: Path) -> None:
    # a loader worker forked from the process that opened the split shares its arrays; a
    # Python object per image (a record, a dict, a list of arrays) would be copied into every
    # worker as soon as its reference count or GC header is written
    small = CocoDataset(*write_coco_split(tmp_path / "a", 10), cache_dir=tmp_path / "cache")
    large = CocoDataset(*write_coco_split(tmp_path / "b", 400), cache_dir=tmp_path / "cache")
    for split in (small, large):
        split.image_ids, split.load(1), split.targets(2)  # used as a loader does
    assert _tracked(small) < 300 and _tracked(large) < _tracked(small) + 10
    index = large._index  # the arrays come memory-mapped from the cache, as every open's do
    assert isinstance(index.boxes, np.memmap) and isinstance(index.path_bytes, np.memmap)
    assert cache_folder(tmp_path / "cache", ("", "")).parent.name == "splits"
