"""Property tests (hypothesis) for detkit.boxes: ranges, symmetry, NMS invariants, no mutation."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from detkit.boxes import (
    batched_multiclass_nms,
    batched_nms,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    multiclass_nms,
    nms,
    soft_nms,
)

SETTINGS = settings(max_examples=60, deadline=None)
coord = st.floats(-1000, 1000, allow_nan=False, width=32)
# Sides are exactly 0 or at least 2**-20 px: class-aware NMS offsets classes apart in float64,
# which cannot keep a side of 1e-38 px next to a coordinate of ~1e3 (documented in ops/nms.py).
side = st.one_of(st.just(0.0), st.floats(2**-20, 400, allow_nan=False, width=32))
# small integer boxes hit ties, touching edges and exact IoUs far more often than floats do
int_box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 6), st.integers(0, 6))
float_box = st.tuples(coord, coord, side, side)


def to_xyxy(rows, dtype=torch.float64) -> torch.Tensor:
    t = torch.tensor(rows, dtype=dtype).reshape(-1, 4)
    return torch.cat((t[:, :2], t[:, :2] + t[:, 2:]), dim=1)


box_lists = st.lists(st.one_of(int_box, float_box), min_size=0, max_size=25)


@SETTINGS
@given(box_lists, box_lists)
def test_iou_symmetric_bounded_and_never_nan(rows_a, rows_b):
    a, b = to_xyxy(rows_a), to_xyxy(rows_b)
    iou = box_iou(a, b)
    assert torch.equal(iou, box_iou(b, a).T)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    giou = generalized_box_iou(a, b)
    assert ((giou >= -1 - 1e-12) & (giou <= 1 + 1e-12)).all()
    for fn in (distance_box_iou, complete_box_iou):
        assert torch.isfinite(fn(a, b)).all()
    if len(rows_a) == len(rows_b):
        for fn in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou):
            assert torch.isfinite(fn(a, b, pairwise=True)).all()


@SETTINGS
@given(
    st.lists(
        st.tuples(coord, coord, st.floats(0.5, 400, width=32), st.floats(0.5, 400, width=32)),
        max_size=20,
    )
)
def test_iou_of_a_box_with_itself_is_one(rows):
    a = to_xyxy(rows, torch.float32)
    # pairwise mode adds eps = 1e-7 to the union (loss semantics), so it is 1 to within eps / area
    assert ((box_iou(a, a, pairwise=True) - 1).abs() <= 1e-6).all()
    assert (box_iou(a, a).diagonal() == 1).all()
    assert (generalized_box_iou(a, a).diagonal() == 1).all()


def greedy_reference(boxes, scores, labels, threshold):
    iou = box_iou(boxes.double(), boxes.double())
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i)):
        if all(labels[j] != labels[i] or iou[j, i] <= threshold for j in keep):
            keep.append(i)
    return keep


scored = st.lists(
    st.tuples(
        int_box | float_box,
        st.integers(0, 5).map(lambda v: v / 5) | st.floats(0, 1),
        st.integers(0, 2),
    ),
    max_size=30,
)
thresholds = st.sampled_from([0.0, 0.2, 0.4, 0.5, 0.7, 1.0]) | st.floats(0, 1)


@SETTINGS
@given(scored, thresholds)
def test_nms_invariants_and_greedy_reference(items, threshold):
    boxes = to_xyxy([b for b, _, _ in items], torch.float32)
    scores = torch.tensor([s for _, s, _ in items], dtype=torch.float32)
    labels = torch.tensor([c for _, _, c in items], dtype=torch.int64)
    before = (boxes.clone(), scores.clone(), labels.clone())
    for keep, lab in (
        (nms(boxes, scores, threshold), [0] * len(items)),
        (batched_nms(boxes, scores, labels, threshold), labels.tolist()),
    ):
        kept = keep.tolist()
        assert keep.dtype == torch.int64 and len(set(kept)) == len(kept)
        assert all(0 <= i < len(items) for i in kept)
        assert (scores[keep][:-1] >= scores[keep][1:]).all()
        iou = box_iou(boxes[keep].double(), boxes[keep].double())
        same = torch.tensor(lab)[keep][:, None] == torch.tensor(lab)[keep][None, :]
        assert not ((iou > threshold) & same).triu(1).any()
        assert kept == greedy_reference(boxes, scores, lab, threshold)
    for b, a in zip(before, (boxes, scores, labels), strict=True):
        assert torch.equal(b, a)


@SETTINGS
@given(scored, st.sampled_from(["linear", "gaussian"]))
def test_soft_nms_sorted_subset_and_scores_never_grow(items, method):
    boxes = to_xyxy([b for b, _, _ in items], torch.float32)
    scores = torch.tensor([s for _, s, _ in items], dtype=torch.float32)
    keep, decayed = soft_nms(boxes, scores, 0.3, 0.5, 0.01, method)
    assert len(set(keep.tolist())) == len(keep)
    assert (decayed[:-1] >= decayed[1:]).all() and (decayed >= 0.01).all()
    assert (decayed <= scores[keep] + 1e-7).all()


@st.composite
def predictions(draw):
    b, n, c = draw(st.integers(1, 3)), draw(st.integers(0, 12)), draw(st.integers(1, 3))
    rows = draw(st.lists(int_box | float_box, min_size=b * n, max_size=b * n))
    boxes = to_xyxy(rows, torch.float32).reshape(b, n, 4)
    prob = arrays(
        np.float32,
        (b, n),
        elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1, width=32),
    )
    obj = torch.from_numpy(draw(prob))
    probs = torch.from_numpy(
        draw(arrays(np.float32, (b, n, c), elements=st.floats(0, 1, width=32)))
    )
    return boxes, obj, probs


@SETTINGS
@given(
    predictions(),
    st.sampled_from(["hard", "soft", "diou"]),
    st.booleans(),
    st.integers(0, 6),
    st.integers(1, 8),
)
def test_batched_multiclass_nms_equals_a_loop_over_images(pred, method, agnostic, max_det, topk):
    boxes, obj, probs = pred
    before = [t.clone() for t in pred]
    kw = {"class_agnostic": agnostic, "method": method, "pre_nms_topk": topk}
    got = batched_multiclass_nms(boxes, obj, probs, 0.05, 0.5, max_det, **kw)
    assert len(got) == boxes.shape[0]
    for i, (b, s, lab) in enumerate(got):
        want = multiclass_nms(boxes[i], obj[i], probs[i], 0.05, 0.5, max_det, **kw)
        for g, w in zip((b, s, lab), want, strict=True):
            assert torch.equal(g, w)
        assert len(s) <= max_det and (s[:-1] >= s[1:]).all() and (s > 0.05 - 1e-7).all()
        assert lab.dtype == torch.int64 and b.shape == (len(s), 4)
    for b, a in zip(before, pred, strict=True):
        assert torch.equal(b, a)


@SETTINGS
@given(predictions(), st.booleans(), st.integers(0, 6), st.integers(1, 8))
def test_postprocess_equals_hard_batched_multiclass_nms(pred, agnostic, max_det, topk):
    """The detection path (its own loop over torchvision's kernel) is the public hard method."""
    import detkit.inference.postprocess as post

    boxes, obj, probs = pred
    kw = {"class_agnostic": agnostic, "pre_nms_topk": topk}
    want = batched_multiclass_nms(boxes, obj, probs, 0.05, 0.5, max_det, **kw)
    cap, post.PRE_NMS_TOPK = post.PRE_NMS_TOPK, topk
    try:
        got = post.postprocess(boxes, obj, probs, 0.05, 0.5, max_det, agnostic=agnostic)
    finally:
        post.PRE_NMS_TOPK = cap
    for g, w in zip(got, want, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(g, w, strict=True))
