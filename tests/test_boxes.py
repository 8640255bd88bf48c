"""Box operations against torchvision.ops and hand-made references (detkit.boxes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.ops as tvo

import detkit.boxes.suppression as nms_module
from detkit.boxes import (
    batched_multiclass_nms,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    class_scores,
    clip_boxes,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    multiclass_nms,
    nms,
    remove_small_boxes,
    soft_nms,
)

IOU_PAIRS = [
    (box_iou, tvo.box_iou),
    (generalized_box_iou, tvo.generalized_box_iou),
    (distance_box_iou, tvo.distance_box_iou),
    (complete_box_iou, tvo.complete_box_iou),
]
IOU_IDS = ["iou", "giou", "diou", "ciou"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# identical, touching, nested, zero-area (line, point), far apart, negative coordinates
EDGE = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 10.0],
        [10.0, 0.0, 20.0, 10.0],
        [2.0, 2.0, 5.0, 5.0],
        [3.0, 3.0, 3.0, 8.0],
        [4.0, 4.0, 4.0, 4.0],
        [4.0, 4.0, 4.0, 4.0],
        [1e4, 1e4, 1e4 + 5.0, 1e4 + 5.0],
        [-20.0, -15.0, -5.0, -1.0],
        [-8.0, -4.0, 3.0, 6.0],
    ]
)


def rand_boxes(n: int, seed: int, size: float = 640.0, dtype=torch.float32, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size + shift
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 4 + 0.5
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def rand_scores(n: int, seed: int, dtype=torch.float32):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 1000), dtype=dtype)


def ref_greedy(boxes, scores, labels, threshold, pair_matrix=tvo.box_iou):
    """Greedy NMS in plain Python: priority (-score, index), suppress same label above threshold."""
    m = pair_matrix(boxes.double(), boxes.double())
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i)):
        if all(labels[j] != labels[i] or m[j, i] <= threshold for j in keep):
            keep.append(i)
    return keep


def ref_soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method):
    """Soft-NMS from the paper's pseudo-code, with Python lists."""
    b = [list(map(float, x)) for x in boxes]
    s = [float(x) for x in scores]
    todo = [i for i in range(len(s)) if s[i] >= score_threshold]
    keep, out = [], []
    while todo:
        m = max(todo, key=lambda i: (s[i], -i))
        keep.append(m)
        out.append(s[m])
        todo.remove(m)
        for i in todo:
            iou = float(tvo.box_iou(torch.tensor([b[m]]).double(), torch.tensor([b[i]]).double()))
            if method == "linear":
                s[i] *= 1 - iou if iou > iou_threshold else 1.0
            else:
                s[i] *= math.exp(-iou * iou / sigma)
        todo = [i for i in todo if s[i] >= score_threshold]
    return keep, out


# ---------------------------------------------------------------- formats, area, clip, filter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_matches_torchvision(in_fmt, out_fmt, dtype):
    boxes = torch.cat((rand_boxes(50, 0, dtype=dtype), EDGE.to(dtype)))
    ours = box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(ours, tvo.box_convert(boxes, in_fmt, out_fmt))
    back = box_convert(ours, out_fmt, in_fmt)
    torch.testing.assert_close(back, boxes)
    assert ours.dtype == dtype and ours.data_ptr() != boxes.data_ptr()


def test_box_convert_hand_values_and_batch_dims():
    xyxy = torch.tensor([[[10.0, 20.0, 30.0, 60.0]]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[[10.0, 20.0, 20.0, 40.0]]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[[20.0, 40.0, 20.0, 40.0]]]
    with pytest.raises(ValueError, match="box format"):
        box_convert(xyxy, "xyxy", "yolo")


def test_box_area_clip_remove_small_match_torchvision():
    boxes = torch.cat((rand_boxes(100, 1, shift=-100.0), EDGE))
    torch.testing.assert_close(box_area(boxes), tvo.box_area(boxes))
    torch.testing.assert_close(
        clip_boxes(boxes, (480, 640)), tvo.clip_boxes_to_image(boxes, (480, 640))
    )
    for min_size in (0.0, 5.0, 10.0, 60.0):
        assert torch.equal(
            remove_small_boxes(boxes, min_size), tvo.remove_small_boxes(boxes, min_size)
        )


def test_box_area_half_is_float32_and_does_not_overflow():
    boxes = torch.tensor([[0.0, 0.0, 600.0, 600.0]], dtype=torch.float16)
    area = box_area(boxes)
    assert area.dtype == torch.float32 and area.item() == 360000.0


def test_clip_boxes_hand_values():
    out = clip_boxes(torch.tensor([[-5.0, 10.0, 700.0, 500.0]]), (480, 640))
    assert out.tolist() == [[0.0, 10.0, 640.0, 480.0]]


# ---------------------------------------------------------------- IoU family


@pytest.mark.parametrize(("ours", "ref"), IOU_PAIRS, ids=IOU_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_family_matches_torchvision_on_random_boxes(ours, ref, dtype):
    a, b = rand_boxes(300, 2, dtype=dtype, shift=-50.0), rand_boxes(200, 3, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(ours(a, b), ref(a, b), **tol)
    assert ours(a, b).dtype == dtype


def test_box_iou_is_bit_equal_to_torchvision_including_chunked_path():
    a, b = rand_boxes(700, 4), rand_boxes(600, 5)  # 420k pairs: several row chunks
    assert torch.equal(box_iou(a, b), tvo.box_iou(a, b))


@pytest.mark.parametrize(("ours", "ref"), IOU_PAIRS, ids=IOU_IDS)
def test_iou_family_edge_cases(ours, ref):
    got, want = ours(EDGE, EDGE), ref(EDGE, EDGE)
    assert torch.isfinite(got).all()
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-6)
    # torchvision gives 0/0 = NaN for the IoU of two zero-area boxes; we give IoU 0
    if ours is box_iou:
        assert (got[~finite] == 0).all()
    assert (got >= -1.5).all() and (got <= 1).all()


def test_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    assert box_iou(a, b).tolist() == [[pytest.approx(1 / 3), 0.0, 1.0]]  # overlap, touching, same
    assert generalized_box_iou(a, b[1:2]).item() == 0.0  # touching: enclosing box = union
    assert generalized_box_iou(a, torch.tensor([[4.0, 0.0, 6.0, 2.0]])).item() == pytest.approx(
        -1 / 3
    )
    nested = torch.tensor([[0.5, 0.5, 1.5, 1.5]])
    assert box_iou(a, nested).item() == 0.25
    assert distance_box_iou(a, nested).item() == pytest.approx(0.25)


def test_zero_area_boxes_give_zero_iou_not_nan():
    point = torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    line = torch.tensor([[3.0, 3.0, 3.0, 8.0]])
    for fn in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou):
        for p in (False, True):
            for x, y in ((point, point), (line, line), (point, line)):
                v = fn(x, y, pairwise=p)
                assert torch.isfinite(v).all()
    assert box_iou(point, point).item() == 0.0 and box_iou(line, line, pairwise=True).item() == 0.0


@pytest.mark.parametrize(("ours", "ref"), IOU_PAIRS, ids=IOU_IDS)
def test_iou_half_precision_computed_in_float32(ours, ref):
    a = rand_boxes(40, 6).half()
    b = torch.cat((rand_boxes(30, 7), torch.tensor([[0.0, 0.0, 600.0, 640.0]]))).half()
    got = ours(a, b)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref(a.float(), b.float()).half(), rtol=1e-3, atol=1e-3)


def test_pairwise_matches_matrix_diagonal_and_torchvision_losses():
    a, b = rand_boxes(64, 8, dtype=torch.float64), rand_boxes(64, 9, dtype=torch.float64)
    for fn in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou):
        torch.testing.assert_close(
            fn(a, b, pairwise=True), fn(a, b).diagonal(), rtol=1e-9, atol=1e-9
        )
    torch.testing.assert_close(
        generalized_box_iou(a, b, pairwise=True), 1 - tvo.generalized_box_iou_loss(a, b)
    )
    torch.testing.assert_close(
        distance_box_iou(a, b, pairwise=True), 1 - tvo.distance_box_iou_loss(a, b)
    )
    torch.testing.assert_close(
        complete_box_iou(a, b, pairwise=True), 1 - tvo.complete_box_iou_loss(a, b)
    )


def test_pairwise_accepts_batch_dims():
    a, b = rand_boxes(12, 10).reshape(3, 4, 4), rand_boxes(12, 11).reshape(3, 4, 4)
    out = box_iou(a, b, pairwise=True)
    assert out.shape == (3, 4)
    torch.testing.assert_close(
        out.reshape(-1), box_iou(a.reshape(-1, 4), b.reshape(-1, 4)).diagonal()
    )


@pytest.mark.parametrize(
    "fn", [box_iou, generalized_box_iou, distance_box_iou, complete_box_iou], ids=IOU_IDS
)
@pytest.mark.parametrize("pairwise", [True, False])
def test_gradients_finite_for_zero_size_boxes(fn, pairwise):
    pred = torch.tensor(
        [[4.0, 4.0, 4.0, 4.0], [3.0, 3.0, 3.0, 8.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 1.0, 1.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    target = torch.tensor(
        [[4.0, 4.0, 4.0, 4.0], [3.0, 3.0, 3.0, 8.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 2.0, 3.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    out = fn(pred, target, pairwise=pairwise)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


def test_pairwise_gradient_agrees_with_torchvision_loss_on_regular_boxes():
    a = rand_boxes(16, 12, dtype=torch.float64).requires_grad_()
    b = rand_boxes(16, 13, dtype=torch.float64)
    (1 - complete_box_iou(a, b, pairwise=True)).sum().backward()
    ours = a.grad.clone()
    a.grad = None
    tvo.complete_box_iou_loss(a, b, reduction="sum").backward()
    torch.testing.assert_close(ours, a.grad)


# ---------------------------------------------------------------- scores


def test_class_scores_is_the_product():
    obj = torch.tensor([[0.5, 1.0]])
    probs = torch.tensor([[[0.2, 0.8], [1.0, 0.0]]])
    assert torch.equal(class_scores(obj, probs), obj[..., None] * probs)
    with pytest.raises(ValueError, match=r"\[\.\.\., C\]"):
        class_scores(obj, probs[0])


# ---------------------------------------------------------------- NMS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 10, 400, 2000])
def test_nms_matches_torchvision(n, dtype):
    boxes, scores = rand_boxes(n, n, dtype=dtype, shift=-300.0), rand_scores(n, n, dtype=dtype)
    for thr in (0.0, 0.3, 0.7, 1.0):
        keep = nms(boxes, scores, thr)
        assert keep.dtype == torch.int64
        assert torch.equal(keep, tvo.nms(boxes, scores, thr))


def test_nms_iou_exactly_at_threshold_is_kept():
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])  # IoU = 2 / 4 exactly
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(boxes, boxes)[0, 1].item() == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1] == tvo.nms(boxes, scores, 0.5).tolist()
    assert nms(boxes, scores, 0.4999).tolist() == [0]
    labels = torch.zeros(2, dtype=torch.int64)
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, labels, 0.4999).tolist() == [0]
    out = multiclass_nms(boxes, scores, torch.ones(2, 1), 0.0, 0.5, 10)
    assert out[2].tolist() == [0, 0] and out[1].tolist() == pytest.approx([0.9, 0.8])


def test_nms_iou_exactly_at_a_threshold_float32_cannot_hold_is_kept():
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 5.0, 1.0]])  # IoU = 2 / 5 exactly
    scores, labels = torch.tensor([0.9, 0.8]), torch.tensor([0, 0])
    assert nms(boxes, scores, 0.4).tolist() == [0, 1]
    assert batched_nms(boxes, scores, labels, 0.4).tolist() == [0, 1]
    # torchvision's float32 kernel rounds 2/5 to 0.4000000059 > 0.4 and suppresses
    assert tvo.nms(boxes, scores, 0.4).tolist() == [0]


def test_nms_ties_break_by_input_order(monkeypatch):
    # integer boxes: IoUs are exact, ties everywhere
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 20, (300, 2), generator=g).float()
    boxes = torch.cat((xy, xy + torch.randint(1, 8, (300, 2), generator=g)), 1)
    scores = torch.randint(0, 4, (300,), generator=g).float() / 4
    labels = torch.randint(0, 3, (300,), generator=g)
    keep = nms(boxes, scores, 0.4)
    assert keep.tolist() == ref_greedy(boxes, scores, [0] * 300, 0.4)
    for loop_above in (0, 10**9):  # both the per-class and the class-offset path
        monkeypatch.setitem(nms_module._LOOP_ABOVE, "cpu", loop_above)
        keep = batched_nms(boxes, scores, labels, 0.4)
        assert keep.tolist() == ref_greedy(boxes, scores, labels.tolist(), 0.4)


def test_nms_identical_boxes_keeps_the_first_of_tied_scores():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 4)
    assert nms(boxes, torch.tensor([0.5, 0.7, 0.7, 0.1]), 0.5).tolist() == [1]


@pytest.mark.parametrize("n", [0, 12, 600, 3000])
def test_batched_nms_matches_torchvision(n):
    boxes, scores = rand_boxes(n, n + 1), rand_scores(n, n + 1)
    labels = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(n))
    for thr in (0.2, 0.5):
        assert torch.equal(
            batched_nms(boxes, scores, labels, thr), tvo.batched_nms(boxes, scores, labels, thr)
        )


def test_batched_nms_negative_coordinates_never_cross_classes():
    # torchvision offsets classes by (max + 1), which is negative here; we offset by the span
    boxes = torch.tensor([[-100.0, -100.0, -60.0, -60.0], [-99.0, -99.0, -61.0, -61.0]])
    scores, labels = torch.tensor([0.9, 0.8]), torch.tensor([0, 1])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_soft_nms_hand_made_cases():
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0], [1, 1, 10, 10]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.7])
    keep, decayed = soft_nms(boxes, scores, method="linear")
    want_keep, want_scores = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.001, "linear")
    assert keep.tolist() == want_keep
    torch.testing.assert_close(decayed, torch.tensor(want_scores, dtype=torch.float32))
    # 0.8 * (1 - 0.5) = 0.4 for the half box; the nested box 0.7 * (1 - 0.81), then decayed again
    assert keep.tolist()[:3] == [0, 2, 1] and decayed[2].item() == pytest.approx(0.4)
    keep, decayed = soft_nms(boxes, scores, sigma=0.5, method="gaussian")
    want_keep, want_scores = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.001, "gaussian")
    assert keep.tolist() == want_keep
    torch.testing.assert_close(decayed, torch.tensor(want_scores, dtype=torch.float32))


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_random_against_reference(method):
    boxes, scores = rand_boxes(60, 20, size=100.0), rand_scores(60, 20)
    keep, decayed = soft_nms(boxes.double(), scores.double(), 0.3, 0.5, 0.05, method)
    want_keep, want_scores = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
    assert keep.tolist() == want_keep
    torch.testing.assert_close(decayed, torch.tensor(want_scores, dtype=torch.float64))
    assert (decayed[:-1] >= decayed[1:]).all()
    with pytest.raises(ValueError, match="method"):
        soft_nms(boxes, scores, method="hard")


# ---------------------------------------------------------------- multiclass NMS


def yolo_like(n: int, c: int, seed: int, batch: int | None = None):
    """Decoded predictions with a realistic score spread: most c * p far below 0.001."""
    g = torch.Generator().manual_seed(seed)
    lead = (n,) if batch is None else (batch, n)
    boxes = rand_boxes(math.prod(lead), seed, size=320.0).reshape(*lead, 4)
    obj = torch.rand(lead, generator=g) ** 6
    probs = torch.softmax(torch.randn((*lead, c), generator=g) * 3, dim=-1)
    return boxes, obj, probs


def reference_multiclass(boxes, obj, probs, score_thr, iou_thr, max_det, agnostic=False):
    """The obvious torch composition: c * p, threshold, torchvision NMS, top max_det."""
    scores = obj[:, None] * probs
    i, c = torch.nonzero(scores > score_thr, as_tuple=True)
    s = scores[i, c]
    keep = tvo.nms(boxes[i], s, iou_thr) if agnostic else tvo.batched_nms(boxes[i], s, c, iou_thr)
    keep = keep[:max_det]
    return boxes[i][keep], s[keep], c[keep]


@pytest.mark.parametrize("agnostic", [False, True])
def test_multiclass_nms_matches_the_torch_composition(agnostic):
    boxes, obj, probs = yolo_like(800, 7, 30)
    got = multiclass_nms(boxes, obj, probs, 0.001, 0.45, 50, class_agnostic=agnostic)
    want = reference_multiclass(boxes, obj, probs, 0.001, 0.45, 50, agnostic)
    assert len(want[0]) == 50  # max_det binds
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert got[2].dtype == torch.int64


def test_multiclass_nms_is_multi_label():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out_boxes, scores, labels = multiclass_nms(
        boxes, torch.tensor([1.0]), torch.tensor([[0.5, 0.4, 0.1]]), 0.2, 0.5, 10
    )
    assert labels.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.5, 0.4])
    assert out_boxes.tolist() == [[0.0, 0.0, 10.0, 10.0]] * 2


def test_multiclass_nms_pre_nms_topk_keeps_the_best_candidates():
    boxes, obj, probs = yolo_like(300, 4, 31)
    got = multiclass_nms(boxes, obj, probs, 0.0, 0.5, 1000, pre_nms_topk=40)
    scores = obj[:, None] * probs
    i, c = torch.nonzero(scores > 0.0, as_tuple=True)
    top = torch.sort(scores[i, c], descending=True, stable=True).indices[:40]
    i, c = i[top], c[top]
    s = scores[i, c]
    keep = tvo.batched_nms(boxes[i], s, c, 0.5)
    assert torch.equal(got[1], s[keep]) and torch.equal(got[2], c[keep])


def test_multiclass_nms_diou_against_reference_across_blocks(monkeypatch):
    monkeypatch.setattr(nms_module, "_DIOU_BLOCK", 7)  # exercise the block-by-block scan
    boxes, obj, probs = yolo_like(200, 3, 32)
    got = multiclass_nms(boxes, obj, probs, 0.001, 0.3, 1000, method="diou")
    scores = obj[:, None] * probs
    i, c = torch.nonzero(scores > 0.001, as_tuple=True)
    keep = ref_greedy(boxes[i], scores[i, c], c.tolist(), 0.3, tvo.distance_box_iou)
    assert got[1].tolist() == pytest.approx(scores[i, c][keep].tolist())
    assert got[2].tolist() == c[keep].tolist()
    # DIoU suppresses no more than IoU does at the same threshold
    assert len(got[1]) >= len(multiclass_nms(boxes, obj, probs, 0.001, 0.3, 1000)[1])


def test_multiclass_nms_soft_against_reference():
    boxes, obj, probs = yolo_like(60, 2, 33)
    got = multiclass_nms(boxes, obj, probs, 0.001, 0.5, 1000, method="soft", soft_sigma=0.5)
    scores = obj[:, None] * probs
    want = []
    for c in range(2):
        i = torch.nonzero(scores[:, c] > 0.001).reshape(-1)
        keep, dec = ref_soft_nms(boxes[i], scores[i, c], 0.5, 0.5, 0.001, "gaussian")
        want += [(d, int(i[k]), c) for k, d in zip(keep, dec, strict=True)]
    want.sort(key=lambda t: (-t[0], t[1], t[2]))
    assert got[1].tolist() == pytest.approx([w[0] for w in want], rel=1e-5)
    assert got[2].tolist() == [w[2] for w in want]
    torch.testing.assert_close(got[0], boxes[[w[1] for w in want]])


@pytest.mark.parametrize("method", ["hard", "soft", "diou"])
def test_batched_multiclass_nms_equals_loop(method):
    boxes, obj, probs = yolo_like(400, 5, 34, batch=3)
    obj[1] = 0.0  # an image without detections
    got = batched_multiclass_nms(boxes, obj, probs, 0.001, 0.5, 30, method=method)
    assert len(got) == 3 and len(got[1][0]) == 0
    for b in range(3):
        want = multiclass_nms(boxes[b], obj[b], probs[b], 0.001, 0.5, 30, method=method)
        for g, w in zip(got[b], want, strict=True):
            assert torch.equal(g, w)


def test_a_validation_batch_runs_nms_once_per_image_not_per_class(monkeypatch):
    """(#20) 16 images x 2000 candidates: above a device's offset limit for the whole batch
    (25,000 on a GPU) the old single call fell back to one kernel call per (image, class), each
    a host round trip on a GPU; per image, every call stays under the limit."""
    import detkit.boxes.suppression as nms_module
    from detkit.inference.postprocess import postprocess

    monkeypatch.setattr(nms_module, "_LOOP_ABOVE", {"cpu": 25000})  # the GPU's limit, on a CPU
    calls = []
    kernel = nms_module._kernel_nms_sorted
    monkeypatch.setattr(
        nms_module, "_kernel_nms_sorted", lambda b, t: calls.append(len(b)) or kernel(b, t)
    )
    boxes, obj, probs = yolo_like(400, 5, 36, batch=16)
    obj.fill_(0.5)  # every (box, class) pair a candidate: 2000 per image
    got = postprocess(boxes, obj, probs, 0.0, 0.6, 300)  # the validation path, cap 3000
    assert calls == [2000] * 16
    for b in (0, 9):
        want = multiclass_nms(boxes[b], obj[b], probs[b], 0.0, 0.6, 300, pre_nms_topk=3000)
        assert all(torch.equal(g, w) for g, w in zip(got[b], want, strict=True))


@pytest.mark.parametrize("method", ["hard", "soft", "diou"])
def test_multiclass_nms_empty_inputs(method):
    for n, c in ((0, 3), (5, 0), (5, 3)):
        boxes, obj, probs = torch.rand(n, 4), torch.zeros(n), torch.rand(n, c)  # scores all 0
        b, s, lab = multiclass_nms(boxes, obj, probs, 0.1, 0.5, 10, method=method)
        assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)
        assert lab.dtype == torch.int64
    out = batched_multiclass_nms(
        torch.rand(2, 0, 4), torch.rand(2, 0), torch.rand(2, 0, 3), 0.1, 0.5, 5
    )
    assert [tuple(x.shape) for x in out[1]] == [(0, 4), (0,), (0,)]
    assert (
        batched_multiclass_nms(
            torch.rand(0, 5, 4), torch.rand(0, 5), torch.rand(0, 5, 3), 0.1, 0.5, 5
        )
        == []
    )


def test_multiclass_nms_rejects_bad_options():
    boxes, obj, probs = yolo_like(10, 2, 35)
    with pytest.raises(ValueError, match="method"):
        multiclass_nms(boxes, obj, probs, 0.1, 0.5, 10, method="fast")
    with pytest.raises(ValueError, match="max_det"):
        multiclass_nms(boxes, obj, probs, 0.1, 0.5, -1)


# ---------------------------------------------------------------- empties, numpy, dtypes, devices


def test_empty_inputs_return_shaped_empties():
    e = torch.zeros(0, 4)
    assert box_iou(e, rand_boxes(3, 0)).shape == (0, 3) and box_iou(rand_boxes(3, 0), e).shape == (
        3,
        0,
    )
    assert generalized_box_iou(e, e).shape == (0, 0)
    assert box_iou(e, e, pairwise=True).shape == (0,)
    assert box_convert(e, "xyxy", "cxcywh").shape == (0, 4) and box_area(e).shape == (0,)
    assert clip_boxes(e, (5, 5)).shape == (0, 4) and remove_small_boxes(e, 1.0).shape == (0,)
    for keep in (
        nms(e, torch.zeros(0), 0.5),
        batched_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5),
    ):
        assert keep.shape == (0,) and keep.dtype == torch.int64
    keep, dec = soft_nms(e, torch.zeros(0))
    assert keep.shape == (0,) and keep.dtype == torch.int64 and dec.shape == (0,)


NUMPY_CALLS = [
    ("box_iou", lambda b, s: box_iou(b, b)),
    ("giou", lambda b, s: generalized_box_iou(b, b, pairwise=True)),
    ("diou", lambda b, s: distance_box_iou(b, b)),
    ("ciou", lambda b, s: complete_box_iou(b, b)),
    ("convert", lambda b, s: box_convert(b, "xyxy", "xywh")),
    ("area", lambda b, s: box_area(b)),
    ("clip", lambda b, s: clip_boxes(b, (100, 100))),
    ("small", lambda b, s: remove_small_boxes(b, 2.0)),
    ("nms", lambda b, s: nms(b, s, 0.5)),
    ("batched_nms", lambda b, s: batched_nms(b, s, np.arange(len(s)) % 2, 0.5)),
    ("soft_nms", lambda b, s: soft_nms(b, s)),
    ("class_scores", lambda b, s: class_scores(s, np.stack((s, 1 - s), 1))),
    ("multiclass", lambda b, s: multiclass_nms(b, s, np.stack((s, 1 - s), 1), 0.01, 0.5, 5)),
    (
        "batched_mc",
        lambda b, s: batched_multiclass_nms(b[None], s[None], s[None, :, None], 0.01, 0.5, 5),
    ),
]


def _flatten(out):
    if isinstance(out, list | tuple):
        return [x for o in out for x in _flatten(o)]
    return [out]


@pytest.mark.parametrize(("name", "call"), NUMPY_CALLS, ids=[n for n, _ in NUMPY_CALLS])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_in_numpy_out_same_values(name, call, dtype):
    boxes = rand_boxes(20, 40, size=80.0).numpy().astype(dtype)
    scores = rand_scores(20, 40).numpy().astype(dtype)
    boxes_before, scores_before = boxes.copy(), scores.copy()
    got = _flatten(call(boxes, scores))
    want = _flatten(call(torch.from_numpy(boxes.copy()), torch.from_numpy(scores.copy())))
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, np.ndarray)
        np.testing.assert_array_equal(g, w.numpy())
        if g.dtype.kind == "f" and name != "area":
            assert g.dtype == dtype
    np.testing.assert_array_equal(boxes, boxes_before)
    np.testing.assert_array_equal(scores, scores_before)


def test_numpy_read_only_and_reversed_arrays_work():
    boxes = rand_boxes(10, 41).numpy()[::-1]
    ro = boxes.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(
        box_iou(boxes, ro), box_iou(torch.tensor(boxes.copy()), torch.tensor(ro)).numpy()
    )


@pytest.mark.parametrize("device", DEVICES)
def test_results_stay_on_the_input_device(device):
    boxes, obj, probs = (t.to(device) for t in yolo_like(50, 3, 42))
    assert box_iou(boxes, boxes).device.type == device
    assert nms(boxes, obj, 0.5).device.type == device
    assert soft_nms(boxes, obj)[0].device.type == device
    assert all(t.device.type == device for t in multiclass_nms(boxes, obj, probs, 0.001, 0.5, 10))


def test_half_precision_nms_and_multiclass():
    boxes, obj, probs = yolo_like(300, 4, 43)
    keep = nms(boxes.half(), obj.half(), 0.5)
    assert torch.equal(keep, nms(boxes.half().float(), obj.half().float(), 0.5))
    b, s, lab = multiclass_nms(boxes.half(), obj.half(), probs.half(), 0.001, 0.5, 20)
    assert b.dtype == torch.float16 and s.dtype == torch.float16 and lab.dtype == torch.int64


# ---------------------------------------------------------------- errors


BAD_SHAPES = [
    (
        lambda: box_iou(torch.zeros(3, 5), torch.zeros(2, 4)),
        r"boxes1 must have shape \[N, 4\], got \(3, 5\)",
    ),
    (
        lambda: box_iou(torch.zeros(2, 4), torch.zeros(4)),
        r"boxes2 must have shape \[N, 4\], got \(4,\)",
    ),
    (
        lambda: box_iou(torch.zeros(2, 4), torch.zeros(3, 4), pairwise=True),
        r"same shape \[\.\.\., 4\]",
    ),
    (
        lambda: box_convert(torch.zeros(3, 5), "xyxy", "xywh"),
        r"boxes must have shape \[\.\.\., 4\], got \(3, 5\)",
    ),
    (lambda: box_area(torch.zeros(3)), r"\[\.\.\., 4\]"),
    (
        lambda: remove_small_boxes(torch.zeros(2, 3, 4), 1.0),
        r"boxes must have shape \[N, 4\], got \(2, 3, 4\)",
    ),
    (
        lambda: nms(torch.zeros(3, 5), torch.zeros(3), 0.5),
        r"boxes must have shape \[N, 4\], got \(3, 5\)",
    ),
    (lambda: nms(torch.zeros(3, 4), torch.zeros(2), 0.5), r"scores must have shape \[N\]"),
    (
        lambda: batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, 1), 0.5),
        r"labels must have shape \[N\]",
    ),
    (lambda: soft_nms(torch.zeros(3, 4), torch.zeros(3, 1)), r"scores must have shape \[N\]"),
    (
        lambda: multiclass_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, 2), 0.1, 0.5, 5),
        r"objectness must have shape \[N\]",
    ),
    (
        lambda: multiclass_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.1, 0.5, 5),
        r"class_probs must have shape \[N, C\]",
    ),
    (
        lambda: multiclass_nms(
            torch.zeros(1, 3, 4), torch.zeros(1, 3), torch.zeros(1, 3, 2), 0.1, 0.5, 5
        ),
        r"boxes must have shape \[N, 4\]",
    ),
    (
        lambda: batched_multiclass_nms(
            torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, 2), 0.1, 0.5, 5
        ),
        r"boxes must have shape \[B, N, 4\]",
    ),
]


@pytest.mark.parametrize(("call", "message"), BAD_SHAPES)
def test_wrong_shapes_raise_value_error_naming_the_expected_shape(call, message):
    with pytest.raises(ValueError, match=message):
        call()
