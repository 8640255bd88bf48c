"""The Python examples of docs/python_api.md run as written, in order, in one namespace, in a
folder that holds the files they name (a checkpoint, images, a video, a data.yaml, a COCO file);
then the README's start block runs in the same folder (one workspace, one checkpoint: the
slowest part is the one training run of python_api.md). The command lines and links of every
page are checked in tests/test_docs.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_predict import make_checkpoint

from detkit.data import SHAPES_CLASSES, convert_dataset, generate_shapes
from detkit.models.checkpoint import write_thresholds

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
README, PYTHON_API = ROOT / "README.md", ROOT / "docs" / "python_api.md"
# what a reader has at hand before the blocks run: a PIL image and a model for detkit.summary
PRELUDE = """
from PIL import Image
from detkit.config.build import build_model
from detkit.config import load_config
pil_image = Image.open("a.jpg")
model = build_model(load_config().model, 4)
"""


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of one page, in order."""
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def _workspace(root: Path, home: Path) -> None:
    """Every file the examples name, under ``root``."""
    shapes = generate_shapes(home / "shapes", num_train=8, num_val=8, seed=4)
    val = sorted((shapes / "images/val").iterdir())
    shutil.copy(val[0], root / "image.jpg")
    shutil.copy(val[1], root / "a.jpg")
    (root / "images").mkdir()
    for image in val[:4]:
        shutil.copy(image, root / "images" / image.name)
    best = make_checkpoint(root / "runs/train/exp/best.pt", overrides=["img_size=128"], lively=True)
    write_thresholds(best, {"conf": 0.3, "f1": 0.5})  # what `detkit eval` leaves
    from detkit.inference.export import export_checkpoint

    export_checkpoint(best)  # runs/train/exp/best.onnx
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for k in range(3):
        writer.write(np.full((64, 96, 3), 40 * k, np.uint8))
    writer.release()
    from detkit.data import CocoDataset, shapes_split

    sources = {s: CocoDataset(*shapes_split(shapes, s)) for s in ("train", "val")}
    convert_dataset(sources, "yolo", home / "yolo")
    (root / "data.yaml").write_text(
        (home / "yolo/data.yaml").read_text() + f"path: {home / 'yolo'}\n", encoding="utf-8"
    )
    coco = json.loads((shapes / "annotations/instances_val.json").read_text())
    shutil.copytree(shapes / "images/val", root / "coco/photos")
    for image in coco["images"]:  # a file another tool wrote: absolute image paths
        image["file_name"] = str(root / "coco/photos" / image["file_name"])
    (root / "coco/annotations.json").write_text(json.dumps(coco))


def test_the_python_api_and_readme_examples_run_as_written(tmp_path, monkeypatch):
    blocks = python_blocks(PYTHON_API)
    assert len(blocks) == 4 and "Detector.from_checkpoint" in blocks[0]
    home = tmp_path / "home"
    monkeypatch.setenv("DETKIT_HOME", str(home))
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    _workspace(root, home)
    namespace: dict = {}
    exec(compile(PRELUDE, "prelude", "exec"), namespace)
    for k, block in enumerate(blocks):
        exec(compile(block, f"docs/python_api.md python block {k + 1}", "exec"), namespace)
    # what the blocks produced, checked beside them
    assert namespace["det"].conf == 0.3 and (root / "annotated.jpg").is_file()
    assert (root / "runs/explain/x/explain.png").is_file()
    assert set(namespace["dets"][0].names) <= set(SHAPES_CLASSES)
    assert (namespace["run_dir"] / "last.pt").is_file() and namespace["onnx_file"].is_file()
    assert "frozen" in (namespace["tuned"] / "initial_weights.txt").read_text()
    assert namespace["report"].out == Path("runs/eval/x") and namespace["run"].records
    assert (root / "yolo_copy/data.yaml").is_file() and namespace["found"].augmented.is_file()
    # the README's start, in a fresh namespace: the checkpoint made above, not the one trained
    (start,) = python_blocks(README)
    (root / "annotated.jpg").unlink()
    readme: dict = {}
    exec(compile(start, "README.md python block", "exec"), readme)
    again = namespace["Detector"].from_checkpoint("runs/train/exp/best.pt").predict("image.jpg")
    assert readme["dets"].boxes.tolist() == again.boxes.tolist() and len(again) > 0
    assert (root / "annotated.jpg").is_file()
    saved = json.loads((root / "runs/eval/start/metrics.json").read_text())
    assert saved["num_images"] == 8  # data.yaml's val split, not the checkpoint's own data
    assert saved["mAP50-95"] == pytest.approx(readme["report"].result.stats["mAP50-95"])
