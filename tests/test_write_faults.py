"""Writes that fail cleanly, and an infer run that continues.

A full disk, a read-only folder and a run folder deleted meanwhile are injected (tests run as
root, whom ``chmod`` does not stop): each gives one line naming the file and what was kept, no
0-byte result, no torn jsonl line, no leftover temporary file. ``detkit infer --resume`` goes on
with the inputs its ``detections.jsonl`` does not hold yet.
"""

from __future__ import annotations

import builtins
import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_infer import _image, _records
from test_predict import make_checkpoint

import detkit.inference.run as inference_module
from detkit.cli import main
from detkit.core import io
from detkit.engine.trainer import Trainer
from detkit.inference.predict import Detector

FULL = OSError(errno.ENOSPC, "No space left on device")


class FillingFile:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes were written (the write
    that crosses the limit writes what fits first, as a full disk does)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.f.write(bytes(data[: self.room]))
        self.room -= n
        return n

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def disk_full_after(monkeypatch: pytest.MonkeyPatch, room: int, module=io) -> None:
    """Binary files opened for writing by ``module`` hold ``room`` more bytes in all."""
    real = builtins.open
    left = {"room": room}

    def opened(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if "b" not in mode or not set(mode) & set("wa"):
            return f
        wrapped = FillingFile(f, left["room"])
        original = wrapped.write

        def write(data):
            n = original(data)
            left["room"] -= n
            return n

        wrapped.write = write
        return wrapped

    monkeypatch.setattr(module, "open", opened, raising=False)


def test_a_full_disk_is_one_error_naming_the_file_and_what_was_kept(tmp_path, monkeypatch):
    path = io.write_text(tmp_path / "last.pt", "old")
    disk_full_after(monkeypatch, 10)
    with pytest.raises(io.WriteError) as info:  # torch.save wraps the OSError in its own error
        io.write_atomic(path, lambda f: torch.save({"w": torch.zeros(1000)}, f))
    error = info.value
    assert str(error) == (
        f"cannot write {path}: No space left on device; the previous last.pt is unchanged"
    )
    assert error.errno == errno.ENOSPC and error.__cause__ is None and error.__suppress_context__
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(io.WriteError, match=r"new.json: No space left on device; nothing was"):
        io.write_json(tmp_path / "new.json", list(range(100)))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_read_only_folder_is_one_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = io.write_text(tmp_path / "metrics.json", "{}")

    def refused(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.os, "replace", refused)
    with pytest.raises(io.WriteError, match=r"Permission denied; the previous metrics\.json is"):
        io.write_text(path, '{"a": 1}')
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _train_args(tiny_shapes: Path, project: Path, *extra: str) -> list[str]:
    return ["train", f"root={tiny_shapes}", "num_train=8", "num_val=4", "batch=4", "img_size=64",
            "workers=0", "device=cpu", "model.widths=[8,16,16,16,16]", "model.neck_width=16",
            f"project={project}", "name=r", "plots=false", "epochs=2", *extra]  # fmt: skip


def test_training_on_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
    tiny_shapes, tmp_path, monkeypatch, capsys
) -> None:
    save = Trainer.save

    def second_save_fills_the_disk(self, *names):
        if self.state.epoch == 2:
            disk_full_after(monkeypatch, 1000)
        return save(self, *names)

    monkeypatch.setattr(Trainer, "save", second_save_fills_the_disk)
    assert main(_train_args(tiny_shapes, tmp_path)) == 1
    err = capsys.readouterr().err
    run = tmp_path / "r"
    line = (f"error: cannot write {run / 'last.pt'}: No space left on device; the previous "
            "last.pt is unchanged")  # fmt: skip
    assert line in err.splitlines() and "Traceback" not in err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_a_run_folder_deleted_while_training_is_not_made_again(
    tiny_shapes, tmp_path, monkeypatch, capsys
) -> None:
    validate = Trainer.validate

    def deleted_during_epoch_2(self):
        if self.state.epoch == 2:
            shutil.rmtree(self.run_dir)
        return validate(self)

    monkeypatch.setattr(Trainer, "validate", deleted_during_epoch_2)
    assert main(_train_args(tiny_shapes, tmp_path)) == 1
    err = capsys.readouterr().err
    assert f"error: the run folder {tmp_path / 'r'} was deleted during training" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def _infer(weights: Path, *args: str) -> int:
    return main(["infer", *args, "--weights", str(weights), "--conf", "0.001", "--max-det", "5"])


def test_infer_on_a_full_disk_keeps_whole_records_and_no_empty_file(
    weights, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    for k in range(5):
        _image(tmp_path / f"in/{k}.jpg", seed=k)
    real = inference_module.Results._record

    def record(self, rec):
        if len(self.records) == 2:  # the disk fills in the middle of the third line
            self._lines = FillingFile(self._lines, 25)
            disk_full_after(monkeypatch, 0)
        return real(self, rec)

    monkeypatch.setattr(inference_module.Results, "_record", record)
    assert _infer(weights, "in", "--no-save") == 1
    err = capsys.readouterr().err
    out = tmp_path / "runs/infer/exp"
    line = ("error: cannot write runs/infer/exp/detections.jsonl: No space left on device; "
            "kept: 2 complete records in it")  # fmt: skip
    assert line in err.splitlines() and "Traceback" not in err
    lines = (out / "detections.jsonl").read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b""  # two whole lines, no torn third
    assert not (out / "detections.json").exists()  # never a 0-byte one
    assert not [p for p in out.iterdir() if p.stat().st_size == 0 or p.suffix == ".tmp"]


def test_infer_resume_reads_only_what_is_not_done_yet(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for k in range(5):
        _image(tmp_path / f"in/{k}.jpg", seed=k)
    calls, predict = [], Detector.predict

    def killed_at_the_fourth(self, *a, **kw):
        calls.append(a[0] if a else kw)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return predict(self, *a, **kw)

    monkeypatch.setattr(Detector, "predict", killed_at_the_fourth)
    assert _infer(weights, "in") == 130
    out = tmp_path / "runs/infer/exp"
    with open(out / "detections.jsonl", "ab") as f:
        f.write(b'{"image": "in/3.jpg", "out')  # a kill -9 in the middle of a line
    monkeypatch.setattr(Detector, "predict", predict)
    calls.clear()
    read = []
    stream = inference_module.Detector.predict_source

    def counted(self, source, **kw):
        read.extend(str(p) for p in source)
        return stream(self, source, **kw)

    monkeypatch.setattr(Detector, "predict_source", counted)
    capsys.readouterr()
    assert _infer(weights, "in", "--resume", str(out)) == 0
    assert "resuming" in capsys.readouterr().out and read == ["in/3.jpg", "in/4.jpg"]
    records = _records(out)
    assert [Path(r["image"]).name for r in records] == [f"{k}.jpg" for k in range(5)]
    assert [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()] == records
    outputs = [r["output"] for r in records]
    assert len(set(outputs)) == 5 and all((out / o).is_file() for o in outputs)
    assert _infer(weights, "in", "--resume", str(out)) == 0  # nothing left: nothing read
    assert read == ["in/3.jpg", "in/4.jpg"] and _records(out) == records
    assert _infer(weights, "in", "--resume", str(tmp_path / "nowhere")) == 2
    assert "no detections.jsonl" in capsys.readouterr().err
