"""Host reads of tensor values in the training step: at most one per optimiser update.

On CUDA every read of a tensor's value on the host (``item``, ``tolist``, ``bool``, ``int``,
``float``, ``.cpu()``) and every ``torch.tensor(...)`` copied to the device (a blocking copy
from pageable memory) waits for the GPU.
Counted here on CPU by wrapping those methods; the assigner's ``nonzero`` (a shape that depends
on the data) is the one kind of wait this cannot see.
"""

from __future__ import annotations

import functools

import pytest
import torch

from detkit.api import build_trainer
from detkit.config import load_config
from detkit.data import generate_shapes, set_loader_epoch
from detkit.engine.trainer import train_one_epoch

pytestmark = pytest.mark.usefixtures("one_thread")

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


class Reads(list):
    """Names of the tensor methods that read values on the host, and of the calls that copy
    host data to the tensor's device (``torch.tensor(..., device=)``, ``new_tensor``),
    appended as they are called; tensors whose id is in ``host_only`` are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.host_only: set[int] = set()


@pytest.fixture
def reads(monkeypatch):
    seen = Reads()
    tensor, new_tensor = torch.tensor, torch.Tensor.new_tensor

    def copied(*args, **kwargs):
        if kwargs.get("device") is not None:
            seen.append("torch.tensor")
        return tensor(*args, **kwargs)

    def new_copied(self, *args, **kwargs):
        seen.append("new_tensor")
        return new_tensor(self, *args, **kwargs)

    monkeypatch.setattr(torch, "tensor", copied)
    monkeypatch.setattr(torch.Tensor, "new_tensor", new_copied)
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if id(self) not in seen.host_only:
                seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, functools.wraps(original)(counted))
    return seen


# SSD matching pads each image's objects to the batch's largest count: a shape read from the data
FORWARD_READS = {"yolo_n": [], "ssdlite320": ["__int__"]}


@pytest.mark.parametrize("model", sorted(FORWARD_READS))
def test_one_host_read_per_update(tmp_path, reads, model):
    root = generate_shapes(tmp_path / "shapes", num_train=8, num_val=2, seed=3)
    cfg = load_config(overrides=[
        f"model={model}", f"root={root}", "num_train=8", "num_val=2", "batch=2", "img_size=64",
        "nominal_batch=4", "device=cpu", "workers=0", "quiet=true", f"project={tmp_path}",
        "plots=false",
    ])  # fmt: skip
    trainer = build_trainer(cfg)
    assert trainer.opts.accumulate == 2
    set_loader_epoch(trainer.train_loader, 0)
    batches = list(trainer.train_loader)
    trainer.net.train()
    forwards, per_update, update = [], [], trainer.updater.step

    def recording(pending, state, signum):
        forwards.append(list(reads))  # the group's forwards and backwards
        reads.clear()
        signum = update(pending, state, signum)
        per_update.append(list(reads))
        reads.clear()
        # Adam's step counters live on the host on CUDA too (torch keeps them on the CPU
        # unless capturable): reading them waits for nothing
        reads.host_only = {id(s["step"]) for s in trainer.optimizer.state.values()}
        return signum

    trainer.updater.step = recording
    t = trainer
    for _ in train_one_epoch(t.net, t.model, t.criterion, batches, len(batches), t.updater,
                             t.state, t.opts, t.ctx, t.device, t.signals):  # fmt: skip
        pass
    # the criterion's first call reads its parts once, for its check
    assert per_update[1] == ["tolist"], per_update
    assert trainer.state.step == 4 and trainer.state.epoch_batches == 4
    # and the forward/backward of a batch reads nothing but a data-dependent shape and
    # copies nothing from the host (the assigner's tables are built once per input size)
    assert forwards[1] == FORWARD_READS[model] * 2, forwards
