"""The per-layer model summary (detkit.models.summary) against hand-computed values."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from detkit.cli import main
from detkit.config import load_config
from detkit.config.build import build_model
from detkit.models.summary import summary

pytestmark = pytest.mark.usefixtures("one_thread")


def test_textbook_conv_ten_5x5_filters():
    # 32x32x3 input, ten 5x5 filters, stride 1, pad 2 -> 32x32x10 and 10 * (5*5*3 + 1) params
    s = summary(nn.Sequential(nn.Conv2d(3, 10, 5, stride=1, padding=2)), 32)
    assert s.rows[0].output == (10, 32, 32)
    assert s.rows[0].params == s.total_params == 760
    assert s.flops == 2 * 10 * 32 * 32 * (5 * 5 * 3)


def test_textbook_1x1_conv_32_filters():
    # 56x56x64 input, 32 filters of 1x1 -> 56x56x32, 32 * (64 + 1) params
    conv = nn.Conv2d(64, 32, 1)
    assert conv(torch.zeros(1, 64, 56, 56)).shape[1:] == (32, 56, 56)
    assert sum(p.numel() for p in conv.parameters()) == 2080


def test_1x1_conv_volume_through_summary():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 32, 1))
    s = summary(model, 56)
    assert [r.output for r in s.rows] == [(64, 56, 56), (32, 56, 56)]
    assert s.rows[1].params == 2080
    assert s.rows[1].flops == 2 * 32 * 56 * 56 * 64


@pytest.mark.parametrize("name", ["yolo_tiny", "yolo_n", "yolo_s", "ssdlite320", "ssd300"])
def test_summary_totals_equal_parameter_count(name):
    model = build_model(load_config(overrides=[f"model={name}"]).model, 4)
    s = summary(model, 64)
    n = sum(p.numel() for p in model.parameters())
    assert s.total_params == n == sum(r.params for r in s.rows)
    grouped = summary(model, 64, depth=1)
    assert sum(r.params for r in grouped.rows) == n
    assert grouped.flops == s.flops > 0
    assert {r.name for r in grouped.rows} >= {"backbone"}


def test_grouped_rows_run_in_order_and_a_module_list_has_no_single_output():
    model = build_model(load_config(overrides=["model=ssd300"]).model, 4)
    grouped = summary(model, 64, depth=1)
    assert [r.name for r in grouped.rows] == ["backbone", "extras", "loc", "conf"]
    assert grouped.rows[1].output is None  # four extra levels, not the first one's volume
    finer = {r.name: r.output for r in summary(model, 64, depth=2).rows}
    assert finer["extras.0"] == (model.extras[0][3].out_channels, 2, 2)  # stride 16 -> 32 at 64 px


def test_summary_flops_match_hand_count_for_a_model():
    """Every conv's FLOPs recomputed from its recorded output volume and shape."""
    model = build_model(load_config(overrides=["model=yolo_n"]).model, 4)
    s = summary(model, 64)
    modules = dict(model.named_modules())
    expected = 0
    for r in s.rows:
        m = modules[r.name]
        if isinstance(m, nn.Conv2d):
            c, h, w = r.output
            kh, kw = m.kernel_size
            expected += 2 * c * h * w * (m.in_channels // m.groups) * kh * kw
            bias = m.bias is not None
            assert r.params == m.out_channels * ((m.in_channels // m.groups) * kh * kw + bias)
    assert s.flops == expected


def test_summary_keeps_training_mode_and_renders():
    model = build_model(load_config().model, 4).train()
    s = summary(model, (64, 96))
    assert model.training
    text = str(s)
    assert "backbone.stages.0.0.conv" in text and f"{s.total_params:,} params" in text
    assert s.rows[0].output == (16, 32, 48)


def test_summary_cli_prints_table(capsys):
    assert (
        main(["summary", "yolo_n", "--img-size", "64", "--num-classes", "4", "--depth", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "neck.top_down" in out and "total:" in out and "GFLOPs" in out
    assert main(["summary", "yolo_n", "--img-size", "1", "2", "3"]) == 2


def test_detkit_summary_is_callable_before_and_after_import():
    import detkit

    model = nn.Sequential(nn.Conv2d(3, 10, 5, padding=2))
    assert detkit.summary(model, 32).total_params == 760
    import detkit.models.summary as module  # binds the module on the package, not on .summary

    assert detkit.summary(model, 32).total_params == 760
    assert module.summary is summary is detkit.summary
    assert type(module) is types.ModuleType  # a plain module: no class swapped at import
