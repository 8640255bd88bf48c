"""The neighbour-cell assigner and SSD matching on hand-made cases; the criteria's options and
their hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from detkit.boxes.coder import make_grid_priors
from detkit.models.losses import SSDLoss, YOLOLoss, assign_neighbors, match_default_boxes

SIZES = [(8, 8), (4, 4), (2, 2)]  # a 64 x 64 input
STRIDES = [8, 16, 32]
ANCHORS = [[(16.0, 16.0)], [(32.0, 32.0)], [(64.0, 64.0)]]
L1, L2 = 64, 64 + 16  # first row of levels 1 and 2


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _priors_of(a, target=None):
    keep = a.target_idx == target if target is not None else slice(None)
    return sorted(a.prior_idx[keep].tolist())


def test_neighbors_centre_cell_plus_nearest_neighbours_on_every_fitting_level():
    # 14 px box centred at (19, 11): fits 16 (level 0) and 32 (level 1, ratio 2.3), not 64.
    # level 0: grid (2.375, 1.375) -> cell (2, 1), left (1, 1), up (2, 0): rows 10, 9, 2
    # level 1: grid (1.19, 0.69) -> cell (1, 0), left (0, 0), down (1, 1): rows 65, 64, 69
    a = assign_neighbors(_t([0, 1, 12, 4, 26, 18]), SIZES, STRIDES, ANCHORS)
    assert _priors_of(a) == [2, 9, 10, L1 + 0, L1 + 1, L1 + 5]
    assert a.batch_idx.tolist() == [0] * 6 and a.target_idx.tolist() == [0] * 6


def test_neighbors_object_on_a_cell_border_gets_both_sides():
    # centre (16, 16) is the corner of cells (1..2, 1..2) on level 0
    a = assign_neighbors(_t([0, 0, 8, 8, 24, 24]), SIZES, STRIDES, ANCHORS)
    level0 = [p for p in _priors_of(a) if p < L1]
    assert level0 == [1 * 8 + 2, 2 * 8 + 1, 2 * 8 + 2]  # (2, 1), (1, 2) and the centre cell (2, 2)
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    centre = torch.tensor([16.0, 16.0])
    for p in a.prior_idx.tolist():  # every target offset lies in (-0.5, 1.5)
        off = centre / priors[p, 2] - priors[p, :2]
        assert ((off >= -0.5) & (off <= 1.5)).all()


def test_neighbors_outside_the_grid_are_dropped():
    # centre (60, 60): cell (7, 7) of level 0, nearer neighbours (8, 7) and (7, 8) do not exist
    a = assign_neighbors(_t([0, 0, 56, 56, 64, 64]), SIZES, STRIDES, ANCHORS)
    assert [p for p in _priors_of(a) if p < L1] == [7 * 8 + 7]


def test_neighbors_two_objects_in_one_cell():
    # both centres in level-0 cell (2, 2); A sits on its middle, B off it: A keeps (2, 2) and B
    # still gets its neighbour cells and its level-1 priors
    t = _t([0, 0, 15, 15, 25, 25], [0, 1, 12, 18, 22, 28])
    a = assign_neighbors(t, SIZES, STRIDES, ANCHORS)
    owner = dict(zip(a.prior_idx.tolist(), a.target_idx.tolist(), strict=True))
    assert owner[2 * 8 + 2] == 0
    assert len(a.prior_idx.unique()) == a.num_pos  # one object per prior
    assert set(a.target_idx.tolist()) == {0, 1}
    assert owner[3 * 8 + 2] == 1  # B's lower neighbour (2, 3)
    # the same boxes in another image do not compete
    t2 = _t([0, 0, 15, 15, 25, 25], [1, 1, 15, 15, 25, 25])
    a2 = assign_neighbors(t2, SIZES, STRIDES, ANCHORS)
    assert (a2.target_idx == 0).sum() == (a2.target_idx == 1).sum()


def test_neighbors_tiny_and_huge_objects():
    # 1 px fits no prior within ratio 4: it still gets its best one (level 0) and neighbours;
    # 64 px fits 64 (level 2) and 32 (ratio 2), not 16 (ratio 4)
    a = assign_neighbors(_t([0, 0, 30, 30, 31, 31], [0, 1, 0, 0, 64, 64]), SIZES, STRIDES, ANCHORS)
    tiny, huge = _priors_of(a, 0), _priors_of(a, 1)
    assert tiny and all(p < L1 for p in tiny)
    assert {p >= L2 for p in huge} == {True, False} and all(p >= L1 for p in huge)


def test_neighbors_every_object_gets_a_positive():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 60
    wh = torch.rand(50, 2, generator=g) * 63 + 1
    boxes = torch.cat([xy, (xy + wh).clamp(max=64)], dim=1)
    t = torch.cat([torch.arange(50)[:, None], torch.zeros(50, 1), boxes], dim=1)  # 1 per image
    a = assign_neighbors(t, SIZES, STRIDES, [[(12.0, 20.0), (20.0, 12.0)]] * 3)
    assert set(a.target_idx.tolist()) == set(range(50))
    assert (torch.bincount(a.target_idx) >= 2).all()  # the centre cell and a neighbour at least
    assert a.prior_idx.max() < make_grid_priors(SIZES, STRIDES, [[(1, 1), (1, 1)]] * 3).shape[0]


def test_neighbors_no_objects():
    a = assign_neighbors(torch.zeros(0, 6), SIZES, STRIDES, ANCHORS)
    assert a.num_pos == 0


# -- SSD matching ---------------------------------------------------------------------------
DEFAULTS = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 0.0, 20.0, 20.0], [5, 5, 15, 15]]
)


def test_match_by_iou_threshold():
    # IoU with the defaults: 1, 0, 0.25, 25/175
    a = match_default_boxes(_t([0, 0, 0, 0, 10, 10]), DEFAULTS, batch_size=1)
    assert a.prior_idx.tolist() == [0]
    # exactly 0.5 counts: [0, 0, 10, 20] overlaps [0, 0, 20, 20] with IoU 0.5 and box 0 with 0.5
    a = match_default_boxes(_t([0, 0, 0, 0, 10, 20]), DEFAULTS, batch_size=1)
    assert a.prior_idx.tolist() == [0, 2]


def test_match_gives_every_object_its_best_box():
    # a 4 px object overlaps box 0 with IoU 0.16 only: still matched there
    a = match_default_boxes(_t([1, 0, 0, 0, 4, 4]), DEFAULTS, batch_size=2)
    assert (a.batch_idx.tolist(), a.prior_idx.tolist()) == ([1], [0])


def test_match_conflict_goes_to_the_higher_iou_and_images_are_separate():
    # both objects' best box is 0; object 1 overlaps it more, object 0 keeps nothing above 0.5
    t = _t([0, 0, 0, 0, 4, 4], [0, 1, 0, 0, 8, 8], [1, 0, 0, 0, 4, 4])
    a = match_default_boxes(t, DEFAULTS, batch_size=2)
    got = sorted(
        zip(a.batch_idx.tolist(), a.prior_idx.tolist(), a.target_idx.tolist(), strict=True)
    )
    assert got == [(0, 0, 1), (1, 0, 2)]


def test_match_two_objects_nearest_wins_per_box():
    t = _t([0, 0, 0, 0, 10, 10], [0, 1, 10, 0, 20, 10])
    a = match_default_boxes(t, DEFAULTS, batch_size=1)
    assert dict(zip(a.prior_idx.tolist(), a.target_idx.tolist(), strict=True)) == {0: 0, 1: 1}


def test_match_no_objects():
    assert match_default_boxes(torch.zeros(0, 6), DEFAULTS, batch_size=3).num_pos == 0


# -- SSD loss -------------------------------------------------------------------------------
PRIORS_CXCYWH = torch.tensor([[5.0, 5.0, 10.0, 10.0], [15.0, 5.0, 10.0, 10.0], [25, 5, 10, 10]])


def test_ssd_loss_hand_computed():
    """One object exactly on default box 0 (encoded target 0), C = 2 (3 logits per box)."""
    raw = torch.zeros(1, 3, 4 + 3)
    raw[0, 0, :4] = torch.tensor([1.0, 0.0, 0.0, 0.5])
    raw[0, 1, 4:] = torch.tensor([5.0, 0.0, 0.0])  # an easy negative
    loss = SSDLoss(num_classes=2, neg_pos_ratio=1.0, beta=1.0, check_init=False)
    parts = loss(raw, _t([0, 1, 0, 0, 10, 10]), PRIORS_CXCYWH)
    assert parts[0] == pytest.approx((1 - 0.5) + 0.5 * 0.5**2)  # smooth L1, beta 1
    assert parts[2] == pytest.approx(math.log(3))  # uniform over background + 2 classes
    assert parts[1] == pytest.approx(math.log(3))  # the hard negative (box 2), not box 1
    assert parts.shape == (3,)  # box, obj, cls: the loss is their sum
    # 3:1 keeps both negatives, at most the boxes there are
    parts = SSDLoss(2, neg_pos_ratio=3.0, check_init=False)(
        raw, _t([0, 1, 0, 0, 10, 10]), PRIORS_CXCYWH
    )
    assert parts[1] == pytest.approx(math.log(3) + math.log(1 + 2 * math.exp(-5)), rel=1e-5)


def test_ssd_hard_negatives_ratio_per_image():
    loss = SSDLoss(num_classes=2, check_init=False)
    ce = torch.arange(20.0).repeat(2, 1)
    positive = torch.zeros(2, 20, dtype=torch.bool)
    positive[0, [3, 19]] = True  # 2 positives in image 0 (one of them the highest loss)
    neg = loss.hard_negatives(ce, positive)
    assert neg[0].nonzero().flatten().tolist() == list(range(12, 19))[1:]  # 6 = 3 x 2 hardest
    assert not neg[1].any()  # no positives, no negatives


def test_ssd_loss_no_objects_is_zero_and_finite():
    raw = torch.randn(2, 3, 7, requires_grad=True)
    parts = SSDLoss(num_classes=2)(raw, torch.zeros(0, 6), PRIORS_CXCYWH)
    assert parts.tolist() == [0.0, 0.0, 0.0]
    parts.sum().backward()
    assert torch.isfinite(raw.grad).all()


def test_ssd_loss_iou_option():
    raw = torch.zeros(1, 3, 7)
    parts = SSDLoss(2, box_loss="giou", check_init=False)(
        raw, _t([0, 1, 0, 0, 10, 10]), PRIORS_CXCYWH
    )
    assert parts[0] == pytest.approx(0.0, abs=1e-6)  # zero offsets decode onto the box


# -- YOLO loss options ----------------------------------------------------------------------
def _yolo_raw(num_classes=3):
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    raw = torch.zeros(1, priors.shape[0], 5 + num_classes)
    raw[..., 4] = math.log(0.01 / 0.99)
    return raw, priors


def test_yolo_giou_box_loss_hand_computed():
    raw, priors = _yolo_raw()
    # zero raw at the centre cell (2, 1) decodes to [12, 4, 28, 20]; the 14 px target inside
    # it has IoU = GIoU = 196 / 256
    loss = YOLOLoss(3, STRIDES, ANCHORS, box_loss="giou", check_init=False)
    parts = loss(raw, _t([0, 2, 13, 5, 27, 19]), priors, SIZES)
    assert parts[0] == pytest.approx(5.0 * (1 - 196 / 256), rel=1e-5)


def test_yolo_hinge_and_focal_class_losses_hand_computed():
    raw, priors = _yolo_raw()
    t = _t([0, 2, 13, 5, 27, 19])
    parts = YOLOLoss(3, STRIDES, ANCHORS, cls_loss="hinge", check_init=False)(raw, t, priors, SIZES)
    assert parts[2] == pytest.approx(2.0)  # C - 1 margins of 1
    parts = YOLOLoss(3, STRIDES, ANCHORS, cls_loss="focal", check_init=False)(raw, t, priors, SIZES)
    assert parts[2] == pytest.approx((2 / 3) ** 2 * math.log(3), rel=1e-5)


def test_yolo_focal_objectness_and_neighbors_normalisation():
    raw, priors = _yolo_raw()
    t = _t([0, 2, 12, 4, 26, 18])
    loss = YOLOLoss(
        3, STRIDES, ANCHORS, assigner="neighbors", xy_scale=2.0, obj_loss="focal", check_init=False
    )
    parts = loss(raw, t, priors, SIZES)
    n, pos = priors.shape[0], 6  # six positives (see the first neighbour test)
    p = 0.01
    expected = pos * 0.25 * (1 - p) ** 2 * -math.log(p) + (n - pos) * 0.75 * p**2 * -math.log(1 - p)
    assert parts[1] == pytest.approx(expected / pos, rel=1e-4)
    assert parts[2] == pytest.approx(math.log(3), rel=1e-5)  # normalised by #positives


def test_yolo_loss_rejects_unknown_options():
    with pytest.raises(ValueError, match="assigner"):
        YOLOLoss(3, STRIDES, ANCHORS, assigner="simota")
    with pytest.raises(ValueError, match="box_loss"):
        SSDLoss(3, box_loss="l2")
