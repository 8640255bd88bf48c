"""detkit.core.io: atomic writes leave the old file or the new one, never a partial file or a temp."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from detkit.core import io


def test_bytes_text_and_json_content(tmp_path):
    assert io.write_bytes(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert io.write_text(tmp_path / "t.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    path = io.write_json(tmp_path / "sub" / "d.json", {"id": np.int64(3), "x": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"id": 3, "x": 0.5}  # parent created, numpy as numbers
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "d.json", "sub", "t.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    path = io.write_text(tmp_path / "keep.json", "old")

    def half_then_fail(f):
        f.write(b"new, half written")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        io.write_atomic(path, half_then_fail)
    with pytest.raises(TypeError, match="set is not JSON serialisable"):
        io.write_json(path, {"a": {1}})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_atomic_path_for_writers_that_take_a_name(tmp_path):
    target = tmp_path / "model.onnx"
    with io.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.")
        tmp.write_bytes(b"proto")
        assert not target.exists()  # nothing at the destination until the block ends
    assert target.read_bytes() == b"proto"
    with pytest.raises(ValueError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError
    assert target.read_bytes() == b"proto"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    io.write_text(tmp_path / "f.txt", "x")
    assert synced == [False, True]  # the temp file's data, then the folder holding the rename


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_mode_respects_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = io.write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # mkstemp alone gives 0600
