"""Element-wise losses against hand-computed values, and their edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from detkit.models.losses import (
    binary_cross_entropy,
    cross_entropy,
    iou_loss,
    multiclass_hinge,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

LN3 = math.log(3.0)


@pytest.mark.parametrize(
    ("logits", "target", "smoothing", "expected"),
    [
        ([0.0, 0.0, 0.0, 0.0], 2, 0.0, math.log(4)),  # uniform: ln C
        ([0.0, 0.0, 0.0, 0.0], 2, 0.3, math.log(4)),  # smoothing keeps ln C for uniform logits
        ([1.0, 2.0, 3.0], 2, 0.0, math.log(1 + math.exp(-1) + math.exp(-2))),
        # p = (0.75, 0.25), smoothed target (0.9, 0.1): -(0.9 ln .75 + 0.1 ln .25)
        ([LN3, 0.0], 0, 0.2, -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))),
    ],
)
def test_cross_entropy_hand_values(logits, target, smoothing, expected):
    out = cross_entropy(torch.tensor([logits]), torch.tensor([target]), smoothing)
    assert out.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("logit", "target", "expected"),
    [(0.0, 1.0, math.log(2)), (LN3, 0.0, math.log(4)), (LN3, 1.0, -math.log(0.75))],
)
def test_binary_cross_entropy_hand_values(logit, target, expected):
    out = binary_cross_entropy(torch.tensor([logit]), torch.tensor([target]))
    assert out.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("logit", "target", "alpha", "gamma", "expected"),
    [
        (0.0, 1.0, 0.25, 2.0, 0.25 * 0.5**2 * math.log(2)),
        # p = 0.75 on a negative: p_t = 0.25, weight (1 - 0.25) = 0.75
        (LN3, 0.0, 0.25, 2.0, 0.75 * 0.75**2 * math.log(4)),
        (LN3, 0.0, -1.0, 0.0, math.log(4)),  # no alpha, gamma 0: plain BCE
    ],
)
def test_sigmoid_focal_hand_values(logit, target, alpha, gamma, expected):
    out = sigmoid_focal_loss(torch.tensor([logit]), torch.tensor([target]), alpha, gamma)
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_softmax_focal_hand_value_and_ce_limit():
    logits, target = torch.tensor([[LN3, 0.0]]), torch.tensor([0])
    out = softmax_focal_loss(logits, target, gamma=2.0)
    assert out.item() == pytest.approx(0.25**2 * -math.log(0.75), rel=1e-5)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(softmax_focal_loss(x, y, gamma=0.0), cross_entropy(x, y))


def test_multiclass_hinge_cs231n_examples():
    # the three scores-and-labels examples of the CS231n linear classification notes
    scores = torch.tensor([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    out = multiclass_hinge(scores, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out, torch.tensor([2.9, 0.0, 12.9]))
    # gradient: +1 on each violating class, -(number of violations) on the true class
    s = scores[:1].clone().requires_grad_(True)
    multiclass_hinge(s, torch.tensor([0])).sum().backward()
    assert s.grad.tolist() == [[-1.0, 1.0, 0.0]]


A = [0.0, 0.0, 2.0, 2.0]
B = [1.0, 0.0, 3.0, 2.0]  # IoU 1/3 with A, same enclosing area as the union, centres 1 apart


@pytest.mark.parametrize(
    ("kind", "a", "b", "expected"),
    [
        ("iou", A, B, 1 - 1 / 3),
        ("giou", A, B, 1 - 1 / 3),
        ("giou", [0, 0, 1, 1], [2, 0, 3, 1], 1 + 1 / 3),  # disjoint: GIoU = -(3 - 2) / 3
        ("diou", A, B, 1 - 1 / 3 + 1 / 13),  # d^2 = 1, enclosing diagonal^2 = 9 + 4
        ("ciou", A, B, 1 - 1 / 3 + 1 / 13),  # same aspect ratio: no v term
        # 4x2 vs 2x4 at a corner: IoU 1/3, d^2/c^2 = 2/32, v = 4/pi^2 (atan 2 - atan 0.5)^2
        ("ciou", [0, 0, 4, 2], [0, 0, 2, 4], None),
    ],
)
def test_iou_losses_hand_values(kind, a, b, expected):
    if expected is None:
        v = 4 / math.pi**2 * (math.atan(2) - math.atan(0.5)) ** 2
        alpha = v / (1 - 1 / 3 + v)
        expected = 1 - (1 / 3 - 2 / 32 - alpha * v)
    out = iou_loss(
        torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), kind
    )
    assert out.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_iou_losses_finite_with_gradients_for_zero_size_boxes(kind):
    pred = torch.tensor(
        [[4.5, 4.5, 4.5, 4.5], [3.0, 3.0, 3.0, 9.0], [1, 1, 1, 1]], requires_grad=True
    )
    target = torch.tensor([[4.0, 4.0, 6.0, 6.0], [3.0, 3.0, 3.0, 9.0], [1, 1, 1, 1]])
    loss = iou_loss(pred, target, kind)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()
    if kind in ("diou", "ciou"):  # the centre term pulls even a point towards the target
        assert pred.grad[0].abs().sum() > 0


def test_iou_loss_unknown_kind():
    with pytest.raises(ValueError, match="unknown"):
        iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), "eiou")
