"""Checkpoints: atomic writes, weights_only loading, RNG state round trips."""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from detkit.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state():
    return {
        "model": {"w": torch.arange(4.0)},
        "config": {"train": {"epochs": 1}},
        "epoch": 3,
        "rng": rng_state(),
    }


def test_save_and_load(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(4.0))
    assert state["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_truncated_file_is_a_clear_error_and_old_file_survives(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"broken\.pt"):
        load_checkpoint(broken)
    assert load_checkpoint(path)["epoch"] == 3


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model": Unpicklable(), "config": {}}, path)
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_executing_pickle_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Exploit(), "config": {}}, f, protocol=2)  # torch.load's own protocol
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(evil)


def test_not_a_detkit_checkpoint(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a detkit checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    save_checkpoint({"model": {}, "config": {}, "rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


_SAVE_LOOP = """
import sys, torch
from detkit.models.checkpoint import save_checkpoint
weights = torch.arange(2_000_000, dtype=torch.float32)  # 8 MB: a save takes a while
i = 0
while True:
    i += 1
    save_checkpoint({"model": {"w": weights + i}, "config": {}, "i": i}, sys.argv[1])
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A real process saving in a loop is killed while a temporary file is being written."""
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path)])
    try:
        deadline = time.monotonic() + 120
        killed_mid_save = False
        while time.monotonic() < deadline and not killed_mid_save:
            if path.exists() and list(tmp_path.glob(".last.pt.*.tmp")):
                proc.send_signal(signal.SIGKILL)
                killed_mid_save = True
            time.sleep(0.001)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert killed_mid_save, "the saving process never got going"
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".last.pt.*.tmp"))  # the interrupted write is left behind ...
    state = load_checkpoint(path)  # ... and the previous complete one loads
    i = state["i"]
    assert i >= 1
    assert torch.equal(state["model"]["w"], torch.arange(2_000_000, dtype=torch.float32) + i)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_checkpoints_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = save_checkpoint(_state(), tmp_path / "best.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # mkstemp alone gives 0600


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "best.onnx",
            b"\x08\x07\x12\x07pytorch",
            "this is an ONNX export: run it with `detkit infer",
        ),
        ("exp.yaml", b"train:\n  epochs: 3\n", "this is a YAML file, not weights"),
        ("data.json", b'{"images": []}', "this is a JSON file, not weights"),
        ("weights.pt", b"epochs: 3\n", "this is a text file"),
    ],
)
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        load_checkpoint(path)
    assert "arbitrary code" not in str(err.value)


def test_an_ultralytics_model_is_one_clear_line(tmp_path):
    """Issue 22: an Ultralytics ``.pt`` (a torch.save zip pickling ``ultralytics`` classes)
    gave torch's text with ANSI bold codes and "try last.pt"; now one line saying what it is.
    The file is made as Ultralytics makes it: a fake ``ultralytics.nn.tasks.DetectionModel``
    module pickled by ``torch.save`` in a subprocess (detkit never imports it)."""
    import subprocess
    import sys

    package = tmp_path / "pkg" / "ultralytics" / "nn"
    package.mkdir(parents=True)
    for init in (package.parent / "__init__.py", package / "__init__.py"):
        init.write_text("")
    (package / "tasks.py").write_text(
        "import torch\nclass DetectionModel(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 1)\n"
    )
    weights = tmp_path / "run" / "best.pt"
    weights.parent.mkdir()
    save = (
        "import torch\nfrom ultralytics.nn.tasks import DetectionModel\n"
        "m = DetectionModel().half()\n"
        f"torch.save({{'model': m, 'ema': None, 'train_args': {{'imgsz': 640}}}}, {str(weights)!r})"
    )
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path / "pkg", check=True, timeout=120)
    (weights.parent / "last.pt").write_bytes(weights.read_bytes())  # an Ultralytics run's pair
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(weights)
    message = str(err.value)
    assert message.startswith(f"{weights} is not a detkit checkpoint: this is an Ultralytics model")
    assert "\n" not in message and "\x1b" not in message and "last.pt" not in message.split(":")[0]
    assert "try it instead" not in message
