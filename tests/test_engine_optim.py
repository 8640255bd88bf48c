"""Schedule, accumulation arithmetic, EMA, optimiser construction, multi-scale sizes, run log."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from detkit.config import TrainConfig
from detkit.config.build import build_optimizer
from detkit.engine.distributed import DistContext, per_rank_batch
from detkit.engine.feed import multiscale_size, resize_batch
from detkit.engine.optim import (
    ModelEMA,
    accumulation_steps,
    build_scheduler,
    group_size,
    lr_factor,
)
from detkit.engine.runlog import plot_results, results_figure, summary_table, write_csv
from detkit.models.checkpoint import nonfinite_entries


@pytest.mark.parametrize(
    ("update", "schedule", "expected"),
    [
        (0, "cosine", 0.01),  # warmup starts at 1% of lr
        (5, "cosine", 0.01 + 0.99 * 5 / 10),
        (10, "cosine", 1.0),  # end of warmup
        (55, "cosine", 0.05 + 0.95 * 0.5),  # half way: cos(pi/2) = 0
        (100, "cosine", 0.05),
        (500, "cosine", 0.05),  # stays at the floor past the end
        (55, "linear", 0.05 + 0.95 * 0.5),
        (32.5, "linear", 0.05 + 0.95 * 0.75),
        (100, "linear", 0.05),
    ],
)
def test_lr_factor_hand_values(update, schedule, expected):
    assert lr_factor(update, 100, 10, schedule, 0.05) == pytest.approx(expected)


def test_lr_factor_is_monotonic_after_warmup_and_rejects_unknown():
    for schedule in ("cosine", "linear"):
        values = [lr_factor(u, 200, 20, schedule) for u in range(20, 201)]
        assert all(a >= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="step"):
        lr_factor(50, 100, 10, "step")


def test_scheduler_steps_per_update_and_restores():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, total_updates=20, warmup_updates=4, schedule="linear")
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([p], lr=0.1)
    sched2 = build_scheduler(opt2, 20, 4, "linear")
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * lr_factor(7, 20, 4, "linear"))


@pytest.mark.parametrize(
    ("batch", "nominal", "expected"), [(32, 0, 1), (16, 64, 4), (24, 64, 3), (64, 32, 1)]
)
def test_accumulation_steps(batch, nominal, expected):
    assert accumulation_steps(batch, nominal) == expected


def test_group_sizes_cover_the_epoch_exactly():
    n, acc = 11, 4
    sizes = [group_size(b, n, acc) for b in range(n)]
    assert sizes == [4] * 8 + [3] * 3
    # each batch's weight 1/size sums to one per group: every update is a mean gradient
    assert sum(1 / s for s in sizes) == pytest.approx(math.ceil(n / acc))


def test_ema_ramp_and_counter():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n = 1: d = min(0.9, 2 / 11)
    d = 2 / 11
    assert ema.module.weight[0, 0].item() == pytest.approx(1 - d)
    assert ema.updates == 1
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_foreach_update_equals_a_lerp_per_tensor():
    """The fused update gives bit-identical weights and BN statistics to one ``lerp_`` per
    tensor (the previous loop), and copies the integer counter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    ema = ModelEMA(model, decay=0.99)
    reference = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for n in range(1, 6):
        model.train()(torch.rand(2, 3, 8, 8))  # moves the BN statistics and counter
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.99, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                reference[k].lerp_(v, 1.0 - d)
            else:
                reference[k].copy_(v)
        for k, v in ema.module.state_dict().items():
            assert torch.equal(v, reference[k]), (n, k)
    assert int(ema.module[1].num_batches_tracked) == 5


def test_build_optimizer_sgd_nesterov_and_adamw_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sgd = build_optimizer(TrainConfig(optimizer="sgd", nesterov=False, lr=0.1), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] is False
    sgd = build_optimizer(TrainConfig(optimizer="sgd", lr=0.1), model)
    assert sgd.defaults["nesterov"] is True and sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01), model)
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3  # conv w | conv b, bn w, b
    with pytest.raises(ValueError, match="sgd, adam or adamw"):
        build_optimizer(TrainConfig(optimizer="lamb"), model)


def test_multiscale_is_deterministic_in_range_and_off_at_zero():
    sizes = [multiscale_size(7, e, b, 256, 0.5) for e in range(3) for b in range(50)]
    assert sizes == [multiscale_size(7, e, b, 256, 0.5) for e in range(3) for b in range(50)]
    assert all(s % 32 == 0 and 128 <= s <= 384 for s in sizes)
    assert len(set(sizes)) > 3
    assert sizes != [multiscale_size(8, e, b, 256, 0.5) for e in range(3) for b in range(50)]
    assert multiscale_size(7, 0, 0, 256, 0.0) == 256


def test_resize_batch_scales_boxes_and_leaves_inputs_alone():
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[1.0, 2.0, 8.0, 16.0, 32.0, 48.0]])
    before = targets.clone()
    out, t = resize_batch(images, targets, 96)
    assert out.shape == (2, 3, 96, 96)
    assert torch.equal(t, torch.tensor([[1.0, 2.0, 12.0, 24.0, 48.0, 72.0]]))
    assert torch.equal(targets, before)
    same, t_same = resize_batch(images, targets, 64)
    assert same is images and t_same is targets


def test_per_rank_batch_must_divide():
    assert per_rank_batch(32, DistContext(1, 4, 1)) == 8
    assert per_rank_batch(6, DistContext()) == 6
    with pytest.raises(ValueError, match="multiple of 4"):
        per_rank_batch(30, DistContext(0, 4, 0))


def test_nonfinite_entries():
    sd = {"w": torch.ones(3), "n": torch.tensor([1.0, math.inf]), "i": torch.tensor([1])}
    assert nonfinite_entries(sd) == ["n"]


def test_csv_plot_and_summary(tmp_path, monkeypatch):
    import matplotlib

    rows = [
        {"epoch": e, "step": 4 * e, "box": 1.0 / e, "obj": 2.0, "cls": 0.5, "val_box": 1.2,
         "val_obj": 2.1, "val_cls": 0.6, "mAP50-95": 0.1 * e, "mAP50": 0.2 * e, "skipped": 0}
        for e in (1, 2, 3)
    ]  # fmt: skip
    write_csv(rows, tmp_path / "metrics.csv")
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,box") and len(lines) == 4
    backend = matplotlib.get_backend()

    def switch(*args, **kwargs):
        raise AssertionError("plot_results switched the process's matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", switch)
    png = plot_results(rows, tmp_path / "results.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend
    table = summary_table(rows, best_epoch=3).splitlines()
    assert table[1].split()[:2] == ["best", "3"] and table[2].split()[:2] == ["last", "3"]
    assert table[1].split()[-1] == "0.3000"


def test_results_png_has_an_lr_panel_and_whole_epoch_ticks():
    rows = [
        {"epoch": e, "box": 1.0 / e, "obj": 2.0, "cls": 0.5, "mAP50": 0.2 * e, "lr": lr}
        for e, lr in ((1, 0.01), (2, 0.005), (3, 0.001))
    ]
    axes = results_figure(rows).axes
    titles = [ax.get_title() for ax in axes]
    assert titles == [
        "train loss", "val loss", "validation (EMA weights)", "learning rate (epoch end)"
    ]  # fmt: skip
    labels = [line.get_label() for line in axes[2].lines]
    assert labels == ["precision", "recall", "mAP50", "mAP50-95"]
    assert axes[3].lines[0].get_ydata().tolist() == [0.01, 0.005, 0.001]
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks == [1.0, 2.0, 3.0], (ax.get_title(), ax.get_xticks())
    val_box = axes[1].lines[0].get_ydata()  # no val_ columns: a gap, not an error
    assert np.isnan(val_box).all()
