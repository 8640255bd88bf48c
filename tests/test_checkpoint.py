"""Checkpoints: atomic writes, weights_only loading, RNG state round trips."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from detkit.engine.checkpoint import (
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
        pickle.dump({"model": _Exploit(), "config": {}}, f)
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
