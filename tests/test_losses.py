"""Assigner and loss on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from detkit.boxes.coder import make_grid_priors
from detkit.models.losses import YOLOLoss, assign_center_cell, smooth_l1

SIZES = [(8, 8), (4, 4), (2, 2)]  # a 64 x 64 input
STRIDES = [8, 16, 32]
ANCHORS = [[(16.0, 16.0)], [(32.0, 32.0)], [(64.0, 64.0)]]


@pytest.mark.parametrize(
    ("diff", "beta", "expected"),
    [(0.05, 0.1, 0.0125), (0.5, 0.1, 0.45), (2.0, 1.0, 1.5), (0.5, 1.0, 0.125), (0.3, 0.0, 0.3)],
)
def test_smooth_l1_hand_values(diff, beta, expected):
    out = smooth_l1(torch.tensor([diff]), torch.tensor([0.0]), beta)
    assert out.item() == pytest.approx(expected)


def _target(b, label, box):
    return torch.tensor([[b, label, *box]], dtype=torch.float32)


def test_centre_cell_and_level_by_size():
    # 14 px box centred at (20, 12): level 0 (anchor 16), cell (2, 1) -> row-major index 1*8+2
    a = assign_center_cell(_target(0, 1, (13, 5, 27, 19)), SIZES, STRIDES, ANCHORS)
    assert a.prior_idx.tolist() == [10]
    # 60 px box centred at (32, 32): level 2 (anchor 64, offset 64 + 16), cell (1, 1) -> 80 + 3
    a = assign_center_cell(_target(0, 0, (2, 2, 62, 62)), SIZES, STRIDES, ANCHORS)
    assert a.prior_idx.tolist() == [83]
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    assert priors[83].tolist() == [1.0, 1.0, 32.0, 64.0, 64.0]


def test_centre_on_cell_border_goes_to_the_lower_right_cell():
    a = assign_center_cell(
        _target(0, 0, (8, 8, 24, 24)), SIZES, STRIDES, ANCHORS
    )  # centre (16, 16)
    assert a.prior_idx.tolist() == [2 * 8 + 2]


def test_centre_on_image_edge_is_clamped_inside():
    a = assign_center_cell(_target(0, 0, (60, 60, 68, 68)), SIZES, STRIDES, ANCHORS)
    assert a.prior_idx.tolist() == [7 * 8 + 7]


def test_two_objects_in_one_cell_keep_the_first():
    t = torch.cat([_target(0, 0, (0, 0, 14, 14)), _target(0, 1, (2, 2, 12, 12))])
    a = assign_center_cell(t, SIZES, STRIDES, ANCHORS)
    assert a.target_idx.tolist() == [0]
    # the same cell in another image is a separate positive
    t2 = torch.cat([_target(0, 0, (0, 0, 14, 14)), _target(1, 1, (1, 1, 15, 15))])
    assert assign_center_cell(t2, SIZES, STRIDES, ANCHORS).num_pos == 2


def test_tiny_and_huge_objects_go_to_the_extreme_levels():
    t = torch.cat([_target(0, 0, (30, 30, 31, 31)), _target(0, 1, (0, 0, 64, 64))])
    a = assign_center_cell(t, SIZES, STRIDES, ANCHORS)
    assert sorted(a.prior_idx.tolist()) == [3 * 8 + 3, 80 + 3]


def _loss():
    return YOLOLoss(num_classes=3, strides=STRIDES, anchors=ANCHORS, beta=0.1)


def test_empty_targets_give_zero_box_and_cls_and_finite_total():
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    raw = torch.randn(2, priors.shape[0], 8, requires_grad=True)
    parts = _loss()(raw, torch.zeros(0, 6), priors, SIZES)
    total = parts.sum()
    assert parts[0] == 0 and parts[2] == 0
    assert math.isfinite(total.item())
    total.backward()
    assert torch.isfinite(raw.grad).all()


def test_initial_loss_matches_hand_computation():
    """Zero logits but objectness at the prior: cls = ln(C), obj = known BCE sums."""
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    n = priors.shape[0]
    raw = torch.zeros(1, n, 8)
    raw[..., 4] = math.log(0.01 / 0.99)
    t = _target(0, 2, (13, 5, 27, 19))  # centre (20, 12): offsets (0.5, 0.5), size 14 vs 16
    loss = _loss()
    parts = loss(raw, t, priors, SIZES)
    assert parts[2] == pytest.approx(math.log(3), rel=1e-5)
    expected_obj = -math.log(0.01) - (n - 1) * math.log(0.99)
    assert parts[1] == pytest.approx(expected_obj, rel=1e-5)
    # box: sigmoid(0)=0.5 equals the 0.5 offsets; w, h: |0 - log(14/16)| > beta -> linear part
    d = abs(math.log(14 / 16))
    assert parts[0] == pytest.approx(5.0 * 2 * (d - 0.05), rel=1e-5)
    assert parts.shape == (3,)  # box, obj, cls: the loss is their sum


def test_iou_aware_objectness_target_is_the_box_iou():
    """obj_iou=1: the positive's confidence target is IoU(decoded box, object), hand-computed."""
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    n = priors.shape[0]
    raw = torch.zeros(1, n, 8)
    raw[..., 4] = math.log(0.01 / 0.99)
    t = _target(0, 2, (13, 5, 27, 19))  # decoded box at zero logits: (12, 4, 28, 20), 16 x 16
    iou = 14 * 14 / (16 * 16)
    p = 0.01
    plain = YOLOLoss(3, STRIDES, ANCHORS, beta=0.1, check_init=False)
    aware = YOLOLoss(3, STRIDES, ANCHORS, beta=0.1, obj_iou=1.0, check_init=False)
    half = YOLOLoss(3, STRIDES, ANCHORS, beta=0.1, obj_iou=0.5, check_init=False)
    rest = -(n - 1) * math.log(1 - p)

    def bce(target: float) -> float:
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    assert plain(raw, t, priors, SIZES)[1] == pytest.approx(bce(1.0) + rest, rel=1e-5)
    assert aware(raw, t, priors, SIZES)[1] == pytest.approx(bce(iou) + rest, rel=1e-5)
    expected = bce(0.5 + 0.5 * iou) + rest
    assert half(raw, t, priors, SIZES)[1] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="obj_iou"):
        YOLOLoss(3, STRIDES, ANCHORS, obj_iou=1.5)


def test_objectness_balance_weights_each_level():
    """obj_balance multiplies each level's summed objectness loss (no objects: background only)."""
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    raw = torch.randn(1, priors.shape[0], 8, generator=torch.Generator().manual_seed(0))
    empty = torch.zeros(0, 6)
    per_level = []
    start = 0
    for h, w in SIZES:
        part = torch.nn.functional.binary_cross_entropy_with_logits(
            raw[0, start : start + h * w, 4], torch.zeros(h * w), reduction="sum"
        )
        per_level.append(part.item())
        start += h * w
    weights = [4.0, 1.0, 0.4][: len(SIZES)]
    loss = YOLOLoss(3, STRIDES, ANCHORS, obj_balance=weights, check_init=False)
    got = loss(raw, empty, priors, SIZES)[1]
    assert got == pytest.approx(
        sum(w * v for w, v in zip(weights, per_level, strict=True)), rel=1e-5
    )
    with pytest.raises(ValueError, match="one weight per stride"):
        YOLOLoss(3, STRIDES, ANCHORS, obj_balance=[1.0])
