"""The non-finite guard: NaN/inf updates are skipped and named, too many stop training, and
non-finite weights are never saved over good ones."""

from __future__ import annotations

import itertools
import logging
import math
from typing import ClassVar

import pytest
import torch

from detkit.api import build_trainer
from detkit.config import load_config
from detkit.engine.safety import NonFiniteError
from detkit.engine.trainer import Trainer
from detkit.models.checkpoint import load_checkpoint, nonfinite_entries

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(root, project, *extra: str) -> Trainer:
    cfg = load_config(
        overrides=[
            f"root={root}", "num_train=16", "num_val=4", "epochs=2", "batch=4", "img_size=64",
            "workers=0", "quiet=true", "device=cpu", "model.widths=[8,16,16,16,16]",
            "model.neck_width=16", f"project={project}", "plots=false", *extra,
        ]
    )  # fmt: skip
    return build_trainer(cfg)


def _watch_updates(trainer: Trainer) -> list[tuple[int, list[torch.Tensor]]]:
    """Record (step before the update, parameters after it) for every update."""
    seen: list[tuple[int, list[torch.Tensor]]] = [(-1, _params(trainer))]
    update = trainer.updater.step

    def recording(pending, state, signum):
        step = trainer.state.step
        signum = update(pending, state, signum)
        seen.append((step, _params(trainer)))
        return signum

    trainer.updater.step = recording
    return seen


def _assert_only_skipped(seen: list[tuple[int, list[torch.Tensor]]], bad: set[int]) -> None:
    """The weights changed at every recorded update except those at the ``bad`` steps."""
    for (_, before), (step, after) in itertools.pairwise(seen):
        unchanged = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert unchanged == (step in bad), step


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_nan_loss_and_nan_input_are_skipped_named_and_repaired(shapes, tmp_path, caplog):
    trainer = _trainer(shapes, tmp_path)
    bad_steps = {1, 2}

    def nan_input(module, args):  # NaN activations also poison BN running stats
        if module.training and trainer.state.step in bad_steps:
            return (args[0] * math.nan,)
        return None

    trainer.model.register_forward_pre_hook(nan_input)
    seen = _watch_updates(trainer)
    with caplog.at_level(logging.WARNING, logger="detkit.engine.safety"):
        trainer.fit()
    for (_, before), (step, after) in itertools.pairwise(seen):
        unchanged = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert unchanged == (step in bad_steps), step
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 2
    assert "epoch 1 batch 2 (step 2)" in warnings[0] and "1 in a row, 1 in total" in warnings[0]
    assert "2 in a row, 2 in total" in warnings[1]
    assert all(".jpg" in w or ".png" in w for w in warnings)  # the batch's image files
    assert trainer.state.skipped == 2 and trainer.ema.updates == 8 - 2
    assert not nonfinite_entries(dict(trainer.model.named_buffers()))  # BN stats repaired
    ckpt = load_checkpoint(trainer.run_dir / "last.pt")
    assert ckpt["skipped"] == 2 and ckpt["history"][-1]["skipped"] == 2
    assert not nonfinite_entries(ckpt["model"]) and not nonfinite_entries(ckpt["ema"])
    assert math.isfinite(ckpt["history"][0]["box"])  # skipped batches stay out of the means


def test_nan_gradient_with_finite_loss_is_skipped(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=1")
    weight = next(trainer.model.parameters())
    weight.register_hook(lambda g: g * math.inf if trainer.state.step == 1 else g)
    seen = _watch_updates(trainer)
    trainer.fit()
    _assert_only_skipped(seen, {1})
    assert trainer.state.skipped == 1


def test_too_many_in_a_row_stop_with_the_last_checkpoint_intact(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=3", "max_nonfinite=3")
    sums = trainer.criterion.sums

    def diverging(raw, *args):
        parts, num_pos = sums(raw, *args)
        if trainer.state.step >= 4 and torch.is_grad_enabled():  # from epoch 2 on
            return parts * math.nan, num_pos
        return parts, num_pos

    trainer.criterion.sums = diverging
    with pytest.raises(NonFiniteError) as info:
        trainer.fit()
    message = str(info.value)
    assert "3 updates in a row had a non-finite loss or gradient" in message
    assert f"{trainer.run_dir / 'last.pt'} is intact" in message
    last = load_checkpoint(trainer.run_dir / "last.pt")
    assert (last["epoch"], last["step"]) == (1, 4)
    assert not nonfinite_entries(last["model"])
    assert (trainer.run_dir / "metrics.csv").read_text().count("\n") == 2  # header + epoch 1


def test_nonfinite_weights_are_never_saved_over_good_ones(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=1")
    trainer.fit()
    path = trainer.run_dir / "last.pt"
    good = path.read_bytes()
    with torch.no_grad():
        first = next(trainer.model.parameters())  # NHWC weights (channels_last): no .view(-1)
        first[(0,) * first.dim()] = math.nan
    with pytest.raises(NonFiniteError, match="refusing to save non-finite weights"):
        trainer.save("last.pt")
    assert path.read_bytes() == good


def test_fp16_scaler_overflow_of_a_finite_loss_is_not_a_failure(shapes, tmp_path, caplog):
    """The scaler skips an overflowing step itself and halves its scale: that is how fp16
    training finds its scale, so it leaves the weights and the EMA alone but is neither
    warned about nor counted toward max_nonfinite (it is counted as an overflow)."""
    trainer = _trainer(shapes, tmp_path, "epochs=1", "max_nonfinite=1")
    trainer.updater.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    weight = next(trainer.model.parameters())
    weight.register_hook(lambda g: g * math.inf if trainer.state.step in (1, 2) else g)
    seen = _watch_updates(trainer)
    with caplog.at_level(logging.WARNING):
        trainer.fit()  # 2 overflows in a row, max_nonfinite=1: no stop
    _assert_only_skipped(seen, {1, 2})
    assert (trainer.state.skipped, trainer.state.overflows) == (0, 2)
    assert trainer.ema.updates == 4 - 2
    assert trainer.updater.scaler.get_scale() == 2.0**14  # halved by each overflow
    assert "non-finite" not in caplog.text


def test_overflow_below_scale_1_is_divergence(shapes, tmp_path):
    """Gradients that overflow with a scale already below 1 are not the scaler's search: they
    count as non-finite updates and reach max_nonfinite."""
    trainer = _trainer(shapes, tmp_path, "epochs=1", "max_nonfinite=2")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=0.5)
    next(trainer.model.parameters()).register_hook(lambda g: g * math.inf)
    with pytest.raises(NonFiniteError, match="2 updates in a row"):
        trainer.fit()
    assert trainer.state.skipped == 2 and trainer.state.overflows == 0


def test_compile_that_fails_at_its_first_forward_falls_back(shapes, tmp_path, monkeypatch, caplog):
    class Lazy(torch.nn.Module):  # what torch.compile returns: it fails only when called
        def __init__(self, module):
            super().__init__()
            self.inner = module

        def forward(self, x):
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", Lazy)
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(shapes, tmp_path, "epochs=1", "compile=true")
    assert trainer.net is trainer.model  # uncompiled (no DDP in one process)
    assert trainer.model.training  # the warm-up left the mode as it was
    assert "compile=true failed (RuntimeError: no C++ compiler found)" in caplog.text


class CompiledBackwardFails(torch.nn.Module):
    """What torch.compile returns when its backward graph cannot be built (say, a missing
    Triton kernel): the forward runs; the error comes at the first backward. Records the
    calls' input shape, mode and gradient mode."""

    calls: ClassVar[list] = []

    def __init__(self, module):
        super().__init__()
        self.inner = module

    def forward(self, x):
        CompiledBackwardFails.calls.append((tuple(x.shape), self.training, torch.is_grad_enabled()))
        return _FailingBackward.apply(self.inner(x))


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward graph failed to compile")


def test_compile_warm_up_runs_a_training_step_inside_the_fallback(
    shapes, tmp_path, monkeypatch, caplog
):
    """The warm-up is one forward and backward at the training shape in train mode (it was an
    eval-mode forward of batch 1 without gradients, so the training graph compiled at step 1,
    outside the fallback); it changes no weight, gradient or BN statistic."""
    monkeypatch.setattr(torch, "compile", CompiledBackwardFails)
    CompiledBackwardFails.calls = []
    with caplog.at_level(logging.WARNING):
        trainer = _trainer(shapes, tmp_path, "epochs=1", "compile=true")
    assert CompiledBackwardFails.calls == [((4, 3, 64, 64), True, True)]  # batch 4, img_size 64
    assert "compile=true failed (RuntimeError: backward graph failed to compile)" in caplog.text
    assert trainer.net is trainer.model  # fell back; training runs uncompiled
    assert all(p.grad is None for p in trainer.model.parameters())
    plain = _trainer(shapes, tmp_path, "epochs=1")  # the same seed: the same initial state
    for (name, a), b in zip(
        trainer.model.state_dict().items(), plain.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # BN statistics and counters put back
    trainer.fit()
