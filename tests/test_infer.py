"""``detkit infer`` on an image, a folder, a glob, a .txt list and a short generated video."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_predict import make_checkpoint

from detkit.cli import main
from detkit.data import SHAPES_CLASSES
from detkit.data.yolo import _parse_row
from detkit.inference.inputs import list_sources
from detkit.inference.predict import resolve_classes
from detkit.inference.run import UniqueStems


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def _image(path: Path, w: int = 96, h: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _video(path: Path, frames: int = 6, w: int = 96, h: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    writer.release()
    return path


def _interrupt_predict_at(n: int, monkeypatch) -> None:
    """``Detector.predict`` raises KeyboardInterrupt (a Ctrl-C) on its ``n``-th call."""
    from detkit.inference.predict import Detector

    predict, calls = Detector.predict, []

    def interrupted(self, *a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return predict(self, *a, **kw)

    monkeypatch.setattr(Detector, "predict", interrupted)


def _run(weights: Path, *args: str) -> int:
    return main(["infer", *args, "--weights", str(weights), "--conf", "0.001", "--max-det", "20"])


def _records(out: Path) -> list[dict]:
    return json.loads((out / "detections.json").read_text())


def test_single_image(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "photo.jpg", w=120, h=80)
    assert _run(weights, str(image), "--save-txt", "--save-crops") == 0
    out = tmp_path / "runs/infer/exp"
    assert cv2.imread(str(out / "photo.jpg")).shape == (80, 120, 3)
    (rec,) = _records(out)
    assert rec["image"] == str(image) and rec["output"] == "photo.jpg"
    assert (rec["width"], rec["height"]) == (120, 80)
    dets = rec["detections"]
    assert 0 < len(dets) <= 20
    boxes = np.array([d["box"] for d in dets])
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 120).all() and (boxes[:, [1, 3]] <= 80).all()
    assert {d["class"] for d in dets} <= set(SHAPES_CLASSES)
    lines = (out / "labels/photo.txt").read_text().splitlines()
    assert len(lines) == len(dets)
    # YOLO label rows (class cx cy w h) that detkit's own reader accepts: pseudo-labels
    assert all(isinstance(_parse_row(x, len(SHAPES_CLASSES)), tuple) for x in lines)
    crops = list((out / "crops").rglob("*.jpg"))
    assert len(crops) == len(dets)
    assert "detections in 1 image(s)" in capsys.readouterr().out


def test_folder_glob_and_list_with_same_base_names(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = _image(tmp_path / "in/a/x.jpg"), _image(tmp_path / "in/b/x.jpg", seed=1)
    _image(tmp_path / "in/a/y.png", seed=2)
    (tmp_path / "in/a/notes.md").write_text("not an image")

    assert _run(weights, "in/a", "--name", "folder") == 0
    out = tmp_path / "runs/infer/folder"
    assert sorted(r["output"] for r in _records(out)) == ["x.jpg", "y.png"]

    assert _run(weights, "in/*/x.jpg", "--name", "glob") == 0
    out = tmp_path / "runs/infer/glob"
    outputs = {r["image"]: r["output"] for r in _records(out)}
    assert outputs == {str(Path("in/a/x.jpg")): "x.jpg", str(Path("in/b/x.jpg")): "x_2.jpg"}
    first, second = cv2.imread(str(out / "x.jpg")), cv2.imread(str(out / "x_2.jpg"))
    assert first.shape == second.shape and (first != second).any()  # two images, not one twice

    listing = tmp_path / "in/a/list.txt"
    listing.write_text(f"x.jpg\n../b/x.jpg  # same base name\n\nmissing.jpg\n{b.resolve()}\n")
    assert _run(weights, str(listing), "--name", "list") == 0
    out = tmp_path / "runs/infer/list"
    assert [r["output"] for r in _records(out)] == ["x.jpg", "x_2.jpg", "x_3.jpg"]
    (skipped,) = json.loads((out / "skipped.json").read_text())
    assert skipped["source"].endswith("missing.jpg") and skipped["reason"] == "not found"
    assert a.is_file()


def test_parent_paths_never_write_outside_the_run_folder(weights, tmp_path, monkeypatch):
    work = tmp_path / "w"
    deep = work / "d1/d2"
    deep.mkdir(parents=True)
    _image(work / "x.jpg")
    monkeypatch.chdir(deep)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert _run(weights, "../../x.jpg", "--save-txt", "--save-crops") == 0
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    run_dir = deep / "runs/infer/exp"
    assert created and all(
        p == deep / "runs" or run_dir in [p, *p.parents] or p == deep / "runs/infer"
        for p in created
    )
    assert (run_dir / "x.jpg").is_file() and (run_dir / "labels/x.txt").is_file()


def test_video(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    video = _video(tmp_path / "clip.mp4", frames=6)
    assert _run(weights, str(video), "--save-txt") == 0
    out = tmp_path / "runs/infer/exp"
    (rec,) = _records(out)
    assert rec["video"] == str(video) and len(rec["frames"]) == 6
    assert (rec["width"], rec["height"]) == (96, 64) and rec["fps"] == pytest.approx(10)
    cap = cv2.VideoCapture(str(out / rec["output"]))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 6
    assert len(list((out / "labels").glob("clip_*.txt"))) == 6


def test_unreadable_inputs_are_skipped_counted_and_reported(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "in/good.jpg")
    (tmp_path / "in/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "in/broken.mp4").write_bytes(b"\x00" * 64)
    _video(tmp_path / "in/ok.avi", frames=3)
    assert _run(weights, "in", "--no-save") == 0
    out = tmp_path / "runs/infer/exp"
    records = _records(out)
    assert sorted(r.get("image", r.get("video")) for r in records) == ["in/good.jpg", "in/ok.avi"]
    assert all(r["output"] is None for r in records)
    assert not list(out.glob("*.jpg")) and not list(out.glob("*.mp4"))  # --no-save
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(Path(s["source"]).name for s in skipped) == ["broken.jpg", "broken.mp4"]
    assert "skipped 2 unreadable input(s)" in capsys.readouterr().out


def test_class_filter(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "x.jpg")
    assert _run(weights, str(image), "--classes", "circle", "2", "--no-save") == 0
    dets = _records(tmp_path / "runs/infer/exp")[0]["detections"]
    assert dets and {d["class"] for d in dets} <= {"circle", "triangle"}
    assert _run(weights, str(image), "--classes", "hexagon") == 2
    assert "hexagon" in capsys.readouterr().err


def test_helpers():
    stems = UniqueStems()
    assert [stems(Path(p)) for p in ["a/x.jpg", "b/X.png", "c/x.mp4", "../..", "a b.jpg"]] == [
        "x",
        "X_2",
        "x_3",
        "input",
        "a_b",
    ]
    assert resolve_classes(["1", "star"], list(SHAPES_CLASSES)) == [1, 3]
    assert resolve_classes(None, ["a"]) is None
    with pytest.raises(FileNotFoundError, match="no images or videos"):
        list_sources(os.path.join("nowhere", "*.jpg"))


def test_save_conf_appends_the_score_and_agnostic_keeps_one_label_per_box(
    weights, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "x.jpg")
    assert _run(weights, str(image), "--save-txt", "--save-conf", "--no-save") == 0
    out = tmp_path / "runs/infer/exp"
    dets = _records(out)[0]["detections"]
    rows = [x.split() for x in (out / "labels/x.txt").read_text().splitlines()]
    assert [len(r) for r in rows] == [6] * len(dets)
    assert [float(r[5]) for r in rows] == pytest.approx([d["score"] for d in dets], abs=1e-4)
    assert [d["category_id"] for d in dets] == [d["class_id"] + 1 for d in dets]  # cat_ids 1..4
    boxes = [tuple(d["box"]) for d in dets]
    assert len(set(boxes)) < len(boxes)  # an untrained model: boxes with several labels
    assert _run(weights, str(image), "--agnostic", "--no-save") == 0
    agnostic = [tuple(d["box"]) for d in _records(tmp_path / "runs/infer/exp2")[0]["detections"]]
    assert agnostic and len(set(agnostic)) == len(agnostic)


def test_bad_files_are_each_skipped_with_a_reason(weights, tmp_path, monkeypatch, capsys, bomb_png):
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "in/good.jpg")
    bomb_png(tmp_path / "in/huge.png", 40000, 30720)  # an uncaught cv2.error before
    bomb_png(tmp_path / "in/bomb.png", 12000, 9000)  # a 20000x20000 one decoded at 3.1 GB
    jpg = (tmp_path / "in/good.jpg").read_bytes()
    (tmp_path / "in/cut.jpg").write_bytes(jpg[: len(jpg) // 2])  # processed silently before
    (tmp_path / "in/ps.jpg").write_bytes(b"%!PS-Adobe-3.0\nshowpage\n")
    latin1 = Path(os.fsdecode(os.fsencode(tmp_path / "in") + b"/caf\xe9.jpg"))
    latin1.write_bytes(jpg)  # a segfault (cv2.imread on a str path) before
    assert _run(weights, "in", "--no-save") == 0
    out = tmp_path / "runs/infer/exp"
    assert sorted(Path(r["image"]).name for r in _records(out)) == sorted(["good.jpg", latin1.name])
    reasons = {
        Path(s["source"]).name: s["reason"] for s in json.loads((out / "skipped.json").read_text())
    }
    assert set(reasons) == {"huge.png", "bomb.png", "cut.jpg", "ps.jpg"}
    assert "bomb" in reasons["huge.png"] and "12000x9000 px > max_pixels" in reasons["bomb.png"]
    assert "not an allowed image format" in reasons["ps.jpg"]
    assert len((out / "detections.jsonl").read_text().splitlines()) == 2
    assert "4 skipped" in capsys.readouterr().out


def test_exit_status_is_1_when_nothing_could_be_read(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.jpg").write_bytes(b"garbage")
    (tmp_path / "in/b.png").write_bytes(b"")
    assert _run(weights, "in") == 1
    assert "no input could be read" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "runs/infer/exp/skipped.json").read_text())) == 2


def test_an_interrupted_run_keeps_what_was_done(weights, tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)
    for k in range(3):
        _image(tmp_path / f"in/{k}.jpg", seed=k)
    _interrupt_predict_at(3, monkeypatch)
    assert _run(weights, "in", "--no-save") == 130
    out = tmp_path / "runs/infer/exp"
    assert [Path(r["image"]).name for r in _records(out)] == ["0.jpg", "1.jpg"]
    assert len((out / "detections.jsonl").read_text().splitlines()) == 2


def test_16_bit_images_are_scaled_as_in_training(weights, tmp_path):
    from detkit.data.images import read_image
    from detkit.inference.inputs import to_rgb

    values = np.array([[0, 257, 1000, 32896, 65535]] * 12, dtype=np.uint16)
    path = tmp_path / "d.png"
    cv2.imwrite(str(path), values)
    expected = read_image(path)
    assert expected[0, :, 0].tolist() == [0, 1, 4, 128, 255]  # >> 8 gave 0, 1, 3, 128, 255
    from PIL import Image

    with Image.open(path) as im:
        assert im.mode.startswith("I")
        np.testing.assert_array_equal(to_rgb(im), expected)  # was clipped to 255
    np.testing.assert_array_equal(to_rgb(values), expected)
    np.testing.assert_array_equal(to_rgb(path), expected)


def test_key_value_grammar_gives_the_same_run_as_flags(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "x.jpg")
    assert _run(weights, str(image), "--no-save", "--device", "cpu") == 0
    pairs = [f"weights={weights}", "conf=0.001", "max_det=20", "device=cpu"]
    assert main(["infer", str(image), *pairs, "no_save=true"]) == 0
    flags = _records(tmp_path / "runs/infer/exp")[0]["detections"]
    keyed = _records(tmp_path / "runs/infer/exp2")[0]["detections"]
    assert keyed == flags and len(flags) == 20


def test_nothing_found_says_the_best_score_and_what_to_try(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "x.jpg")
    from detkit.inference.predict import Detector

    best = float(Detector.from_checkpoint(weights, device="cpu").predict(image, conf=0.0).scores[0])
    assert 0 < best < 0.99
    assert main(["infer", str(image), f"weights={weights}", "conf=0.99", "no_save=true"]) == 0
    out = capsys.readouterr().out
    assert "0 detections in 1 image(s)" in out
    assert f"no detections at conf 0.99: the highest score on x.jpg is {best:.3f}" in out
    assert f"conf={best * 0.8:.3g}" in out


def test_predict_source_streams_images_frames_and_errors_in_order(weights, tmp_path):
    from detkit.inference.predict import Detector

    _image(tmp_path / "in/a.jpg")
    (tmp_path / "in/b.jpg").write_bytes(b"not an image")
    _video(tmp_path / "in/c.mp4", frames=3)
    det = Detector.from_checkpoint(weights, device="cpu", conf=0.001, max_det=5)
    items = list(det.predict_source(tmp_path / "in"))
    assert [(i.path.name, i.frame) for i in items] == [
        ("a.jpg", None), ("b.jpg", None), ("c.mp4", 0), ("c.mp4", 1), ("c.mp4", 2),
    ]  # fmt: skip
    good, bad = items[0], items[1]
    assert bad.detections is None and bad.image is None and "not an allowed image" in bad.error
    assert good.error == "" and 0 < len(good.detections) <= 5
    assert good.detections.orig_shape == (64, 96) and items[2].fps == pytest.approx(10)
    expected = det.predict(str(tmp_path / "in/a.jpg"))  # the same decode and result as predict
    assert np.array_equal(good.detections.boxes.numpy(), expected.boxes.numpy())
    jpg = (tmp_path / "in/a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) - 200])  # no end marker: training skips it
    with pytest.raises(ValueError, match="JPEG file ends early"):
        det.predict(str(tmp_path / "cut.jpg"))
    with pytest.raises(ValueError, match="hexagon"):  # at the call, before any file is read
        det.predict_source(tmp_path / "in", classes=["hexagon"])
    with pytest.raises(FileNotFoundError):
        det.predict_source(tmp_path / "nowhere")


def test_batches_give_the_same_detections_in_the_same_order(weights, tmp_path, monkeypatch):
    """``batch=3`` runs consecutive images and frames as one forward pass (a GPU sits idle on
    one image): the same items in the same order, the same detections; an unreadable input
    in the middle stays in place, and a batch that fails is retried one item at a time."""
    from detkit.inference.predict import Detector

    for k, (w, h) in enumerate([(96, 64), (64, 96), (80, 80), (120, 40)]):
        _image(tmp_path / f"in/{k}.jpg", w, h, seed=k)
    (tmp_path / "in/2b.jpg").write_bytes(b"not an image")
    _video(tmp_path / "in/v.mp4", frames=4)
    det = Detector.from_checkpoint(weights, device="cpu", conf=0.001, max_det=5)
    one = list(det.predict_source(tmp_path / "in"))
    calls = []
    predict = det.predict

    def counted(images, *args, **kwargs):
        calls.append(len(images))
        if any(im.shape[:2] == (40, 120) for im in images) and len(images) > 1:
            raise MemoryError("a batch too large")  # the retry runs each image alone
        return predict(images, *args, **kwargs)

    monkeypatch.setattr(det, "predict", counted)
    three = list(det.predict_source(tmp_path / "in", batch=3))
    assert [(i.path.name, i.frame, i.error) for i in three] == [
        (i.path.name, i.frame, i.error) for i in one
    ]
    assert [i.path.name for i in three[:4]] == ["0.jpg", "1.jpg", "2.jpg", "2b.jpg"]
    for a, b in zip(one, three, strict=True):
        if a.detections is not None:
            torch.testing.assert_close(b.detections.boxes, a.detections.boxes, atol=1e-4, rtol=0)
            torch.testing.assert_close(b.detections.scores, a.detections.scores, atol=1e-5, rtol=0)
    # 0-2 in one pass, 2b unreadable; then 3.jpg with frames 0-1 fails and goes one by one
    assert calls == [3, 3, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="batch must be at least 1"):
        det.predict_source(tmp_path / "in", batch=0)
    monkeypatch.chdir(tmp_path)
    assert _run(weights, "in", "--batch", "4", "--no-save") == 0


def test_infer_from_python_writes_the_run_folder_as_the_cli(weights, tmp_path, monkeypatch):
    import detkit

    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "in/a.jpg")
    _video(tmp_path / "in/c.mp4", frames=2)
    run = detkit.infer("in", weights, save_txt=True, conf=0.001, max_det=20, progress=False)
    assert run.out.resolve() == tmp_path / "runs/infer/exp" and not run.skipped
    assert _records(run.out) == run.records
    assert [r.get("image", r.get("video")) for r in run.records] == ["in/a.jpg", "in/c.mp4"]
    assert len(run.records[1]["frames"]) == 2 and (run.out / "a.jpg").is_file()
    assert sorted(p.name for p in (run.out / "labels").iterdir()) == [
        "a.txt", "c_000000.txt", "c_000001.txt",
    ]  # fmt: skip
    import detkit.inference.run as run_module

    calls, real = [], run_module.infer
    monkeypatch.setattr(run_module, "infer", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert main(["infer", "in", "--weights", str(weights), "conf=0.001", "max_det=20",
                 "--save-txt"]) == 0  # fmt: skip
    assert _records(tmp_path / "runs/infer/exp2") == run.records  # the CLI is the same function
    assert len(calls) == 1  # ... called once, not re-composed from its parts


def test_ctrl_c_in_python_infer_closes_the_folder_and_says_what_was_done(
    weights, tmp_path, monkeypatch
):
    import detkit
    from detkit.inference.run import Interrupted

    monkeypatch.chdir(tmp_path)
    for k in range(3):
        _image(tmp_path / f"in/{k}.jpg", seed=k)
    _interrupt_predict_at(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt) as info:  # still a KeyboardInterrupt to callers
        detkit.infer("in", weights, conf=0.001, progress=False)
    assert isinstance(info.value, Interrupted)
    done = info.value.results
    assert [Path(r["image"]).name for r in done.records] == ["0.jpg"]
    assert _records(done.out) == done.records  # detections.json written before it went on


@pytest.mark.slow
def test_sigterm_to_the_process_group_keeps_the_results(weights, tmp_path):
    """``kill -TERM -- -PGID`` mid-run: exit 143 after writing detections.json of what was done."""
    import signal
    import subprocess
    import sys
    import time

    for k in range(400):
        _image(tmp_path / f"in/{k:03d}.jpg", seed=k)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, str(root / "tools/infer.py"), "in", "--weights", str(weights), "--no-save"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = tmp_path / "runs/infer/exp/detections.jsonl"
    deadline = time.monotonic() + 120
    while (not lines.exists() or len(lines.read_text().splitlines()) < 5) and proc.poll() is None:
        assert time.monotonic() < deadline, "no results within 120 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted:" in err and "Traceback" not in err
    records = _records(tmp_path / "runs/infer/exp")
    assert 5 <= len(records) < 400 and len(lines.read_text().splitlines()) == len(records)
