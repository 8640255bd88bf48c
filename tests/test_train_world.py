"""A run continued on another number of processes and GPUs, and the multi-node cases of
``--resume auto``, on CPU: gloo ranks, and a simulated GPU count (``torch.cuda`` queries
replaced).

One run goes 1 process -> 2 gloo ranks -> 1 process: the 2 ranks are two "nodes" with their own
run folders (rank 1's holds no ``last.pt``), launched with ``--resume auto``; rank 0's save then
fails (a full disk) and every rank must raise it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detkit.api import build_trainer, resume, resume_or_start, train
from detkit.config import load_config
from detkit.data import generate_shapes
from detkit.engine import distributed as ddp
from detkit.engine.resume import ResumeError, check_same_start
from detkit.models.checkpoint import load_checkpoint, rng_state, set_rng_state

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(root: Path, project: Path, *extra: str) -> list[str]:
    # 16 images, global batch 4: 4 steps per epoch on 1 or 2 processes
    return [
        f"root={root}", "num_train=16", "num_val=4", "epochs=2", "batch=4", "img_size=64",
        "workers=0", "quiet=true", "device=cpu", "model.widths=[8,16,16,16,16]",
        "model.neck_width=16", f"project={project}", "plots=false", "name=exp", "seed=5",
        "dist_timeout=0.5", *extra,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_rank(rank: int, port: int, root: Path, tmp: Path) -> None:
    """One rank on its own "node": its own run folder ``node<rank>``, ``--resume auto``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK="0",
    )  # fmt: skip
    torch.set_num_threads(1)
    handler = logging.FileHandler(tmp / f"rank{rank}.log")
    logging.getLogger("detkit").addHandler(handler)
    logging.getLogger("detkit").setLevel(logging.INFO)
    import detkit.engine.trainer as trainer_module

    starts, save = [], trainer_module.save_checkpoint
    load = trainer_module.Trainer.load

    def recording_load(self, ckpt):
        load(self, ckpt)
        starts.append((self.state.epoch, self.state.step))

    def full_disk(state, path):  # rank 0's last save fails
        if state["step"] == 6:
            raise OSError(28, "No space left on device")
        return save(state, path)

    trainer_module.Trainer.load = recording_load
    trainer_module.save_checkpoint = full_disk
    out: dict = {"starts": starts}
    overrides = ["max_steps=6"]
    try:
        resume_or_start(load_config(overrides=_overrides(root, tmp / f"node{rank}") + overrides),
                        overrides)  # fmt: skip
    except OSError as e:
        out["error"] = str(e)
    except Exception as e:  # e.g. a collective timing out: recorded for the assertion message
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        ddp.cleanup()
        logging.getLogger("detkit").removeHandler(handler)
    torch.save(out, tmp / f"rank{rank}.pt")


@pytest.mark.slow  # two processes start torch
def test_one_to_two_nodes_with_own_folders_to_one_process(tmp_path):
    root = generate_shapes(tmp_path / "shapes", num_train=16, num_val=4, seed=5)
    first = train(load_config(overrides=_overrides(root, tmp_path / "node0", "max_steps=2")))
    assert load_checkpoint(first / "last.pt")["step"] == 2  # 1 process, mid-epoch 1
    assert not (tmp_path / "node1").exists()

    mp.spawn(_node_rank, args=(_free_port(), root, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # rank 0 read node0/exp/last.pt and sent it: rank 1 continued it too, not a fresh run
    assert r0["starts"] == r1["starts"] == [(0, 2)], (r0, r1)
    # the save at step 6 failed on rank 0: every rank raised it, none waited in a collective
    assert r0["error"] == r1["error"] == "[Errno 28] No space left on device", (r0, r1)
    log0 = (tmp_path / "rank0.log").read_text()
    assert "--resume auto: continuing from" in log0
    assert "saved by 1 process(es) on 2: the global batch stays 4 (2 images per process" in log0
    assert not (tmp_path / "node1/exp/last.pt").exists()  # rank 0 alone writes

    last = tmp_path / "node0/exp/last.pt"
    two = load_checkpoint(last)  # the epoch-end save at step 4, written by 2 processes
    assert (two["epoch"], two["step"], two["world_size"]) == (1, 4, 2)
    assert two["world"] == [[0, 1], [2, 2]]
    assert two["data"]["batches"] == 4  # 2 images per rank, 4 batches each

    resume(last, ["max_steps=0"])  # 2 -> 1 process, to the end
    done = load_checkpoint(last)
    assert (done["epoch"], done["step"], done["world_size"]) == (2, 8, 1)
    assert done["world"] == [[0, 1], [2, 2], [4, 1]]
    assert [row["epoch"] for row in done["history"]] == [1, 2]


def test_world_change_is_logged_with_what_stays(tmp_path, caplog):
    """2 -> 1 process in one process (the checkpoint says 2): logged once, recorded."""
    root = generate_shapes(tmp_path / "shapes", num_train=16, num_val=4, seed=5)
    run = train(load_config(overrides=_overrides(root, tmp_path, "max_steps=2", "epochs=1")))
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["world_size"], ckpt["world"] = 2, [[0, 2]]
    ckpt["data"]["batches"] = 5
    trainer = build_trainer(load_config(overrides=_overrides(root, tmp_path / "b", "epochs=1")))
    with caplog.at_level(logging.WARNING, logger="detkit.engine.trainer"):
        trainer.load(ckpt)
    assert trainer.state.world == [[0, 2], [2, 1]]
    text = caplog.text
    assert "saved by 2 process(es) on 1: the global batch stays 4 (4 images per process, 2" in text
    assert "epoch 1 goes on at global batch 2 of the same order" in text
    assert "an epoch has 4 batches now, 5 before" in text


def test_ranks_that_resumed_different_points_are_refused(monkeypatch):
    check_same_start(2, 8, ddp.DistContext(), "last.pt")  # one process: nothing to compare
    ctx = ddp.DistContext(0, 2, 0)
    monkeypatch.setattr(ddp, "all_gather", lambda obj, ctx: [obj, (1, 4)])
    with pytest.raises(ResumeError, match=r"rank 0: epoch 2 step 8, rank 1: epoch 1 step 4"):
        check_same_start(2, 8, ctx, "runs/exp/last.pt")
    check_same_start(1, 4, ctx, "runs/exp/last.pt")  # the same point: fine


class FakeGpus:
    """``torch.cuda``'s RNG queries on a machine with ``count`` GPUs (CPU tensors stand in)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.count, self.restored = count, []
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)

    def _index(self, device) -> int:
        index = torch.device(device).index or 0
        if index >= self.count:  # torch.cuda.default_generators[index]
            raise IndexError("tuple index out of range")
        return index

    def get_rng_state(self, device="cuda"):
        return torch.full((8,), self._index(device), dtype=torch.uint8)

    def set_rng_state(self, state, device="cuda"):
        self.restored.append((self._index(device), int(state[0])))

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(self.count)]

    def set_rng_state_all(self, states):
        for i, state in enumerate(states):
            self.set_rng_state(state, torch.device("cuda", i))


def test_a_checkpoint_from_8_gpus_resumes_on_1(tmp_path, monkeypatch):
    """Rank 0 of an 8-GPU job saves its own GPU's RNG state only; resuming on 1 GPU restores
    it there (it was one state per visible GPU, and restoring 8 on 1 raised IndexError)."""
    root = generate_shapes(tmp_path / "shapes", num_train=16, num_val=4, seed=5)
    trainer = build_trainer(load_config(overrides=_overrides(root, tmp_path, "epochs=1")))
    trainer.device = torch.device("cuda", 0)  # only the RNG calls see it
    FakeGpus(monkeypatch, 8)
    ckpt = trainer.checkpoint()
    assert torch.is_tensor(ckpt["rng"]["cuda"])  # one state, not a list per GPU
    one = FakeGpus(monkeypatch, 1)
    trainer.load(ckpt)
    assert one.restored == [(0, 0)]
    # a checkpoint written before: one state per GPU of the 8; the first (rank 0's) is restored
    old = rng_state() | {"cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(8)]}
    one.restored.clear()
    set_rng_state(old, torch.device("cuda", 0))
    assert one.restored == [(0, 0)]


def test_an_empty_scaler_state_resumes_under_fp16(tmp_path):
    """A bf16, CPU or amp=false checkpoint holds a disabled scaler's empty state; an fp16 run
    (an enabled scaler) continues it with a fresh scale instead of raising."""
    root = generate_shapes(tmp_path / "shapes", num_train=16, num_val=4, seed=5)
    trainer = build_trainer(load_config(overrides=_overrides(root, tmp_path, "epochs=1")))
    ckpt = trainer.checkpoint()
    assert ckpt["scaler"] == {}  # saved by a CPU run
    trainer.updater.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # what fp16 builds
    trainer.load(ckpt)
    assert trainer.updater.scaler.get_scale() == 1024.0


def test_a_small_dev_shm_is_warned_about_when_training_starts(
    tiny_shapes, tmp_path, monkeypatch, caplog
):
    """A worker dies of a bus error mid-epoch when /dev/shm cannot hold the batches in flight
    (a container's default 64 MiB): said once, before the first batch."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 20, 0, 1 << 20))
    overrides = _overrides(tiny_shapes, tmp_path, "num_train=8", "workers=2", "img_size=256")
    with caplog.at_level(logging.WARNING, logger="detkit.engine.feed"):
        trainer = build_trainer(load_config(overrides=overrides))
    trainer.train_loader.close()
    assert (
        "/dev/shm has 1 MiB free, and 2 loader workers x 2 prefetched batches of 4 images at 256 px"
        in caplog.text
    )
