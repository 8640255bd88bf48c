"""Priors and box coders (detkit.boxes.coder): layout contract, exact round trips, tracing."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detkit.boxes.coder import GridCoder, SSDCoder, make_default_boxes, make_grid_priors

SIZES = [(4, 6), (2, 3)]
STRIDES = [8, 16]
ANCHORS = [[(10.0, 13.0), (16.0, 30.0), (33.0, 23.0)], [(30.0, 61.0), (62.0, 45.0), (59.0, 119.0)]]
SSD300 = {
    "feature_sizes": [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)],
    "img_size": (300, 300),
    "scales": [21.0, 45.0, 99.0, 153.0, 207.0, 261.0, 315.0],
    "aspect_ratios": [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0], [2.0]],
    "strides": [8, 16, 32, 64, 100, 300],
}


def boxes_in_cells(priors: torch.Tensor, seed: int, dtype=torch.float64) -> torch.Tensor:
    """One random xyxy box (input px) per prior, centred inside the prior's cell."""
    g = torch.Generator().manual_seed(seed)
    p = priors.double()
    centre = (p[:, :2] + torch.rand(len(p), 2, generator=g, dtype=torch.float64)) * p[:, 2:3]
    size = p[:, 3:5] * torch.exp(torch.randn(len(p), 2, generator=g, dtype=torch.float64))
    return torch.cat((centre - size / 2, centre + size / 2), dim=1).to(dtype)


# ---------------------------------------------------------------- grid priors


def test_grid_priors_hand_values():
    priors = make_grid_priors([(2, 2)], [32], [[(10.0, 13.0), (16.0, 30.0)]])
    assert priors.shape == (8, 5) and priors.dtype == torch.float32
    assert priors[:4].tolist() == [
        [0.0, 0.0, 32.0, 10.0, 13.0],
        [0.0, 0.0, 32.0, 16.0, 30.0],
        [1.0, 0.0, 32.0, 10.0, 13.0],
        [1.0, 0.0, 32.0, 16.0, 30.0],
    ]
    assert priors[4].tolist() == [0.0, 1.0, 32.0, 10.0, 13.0]  # row y = 1 after the whole row y = 0


def test_grid_priors_without_anchors_scale_by_stride():
    priors = make_grid_priors(SIZES, STRIDES, device="cpu", dtype=torch.float64)
    assert priors.shape == (4 * 6 + 2 * 3, 5) and priors.dtype == torch.float64
    assert priors[-1].tolist() == [2.0, 1.0, 16.0, 16.0, 16.0]
    assert (priors[:24, 3:] == 8).all()


def test_grid_priors_match_the_head_flattening_contract():
    """Rows of permute(0, 2, 3, 1).reshape(B, H*W*A, K) + cat over levels == prior rows."""
    num_outputs, batch, levels = 5 + 3, 2, []
    for level, (h, w) in enumerate(SIZES):
        a = len(ANCHORS[level])
        out = torch.zeros(batch, a * num_outputs, h, w)
        for anchor in range(a):
            c = anchor * num_outputs  # channels grouped anchor-major: a * (5 + C) + k
            out[:, c + 0] = torch.arange(w).float()[None, None, :]
            out[:, c + 1] = torch.arange(h).float()[None, :, None]
            out[:, c + 2] = anchor
            out[:, c + 3] = level
        levels.append(out.permute(0, 2, 3, 1).reshape(batch, h * w * a, num_outputs))
    raw = torch.cat(levels, dim=1)
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    assert raw.shape[1] == priors.shape[0]
    for row in range(priors.shape[0]):
        gx, gy, anchor, level = raw[0, row, :4].long().tolist()
        assert priors[row].tolist() == [gx, gy, STRIDES[level], *ANCHORS[level][anchor]]


def test_grid_priors_reject_mismatched_levels():
    with pytest.raises(ValueError, match="strides must have one entry per level"):
        make_grid_priors(SIZES, [8])
    with pytest.raises(ValueError, match="anchors must have one entry per level"):
        make_grid_priors(SIZES, STRIDES, ANCHORS[:1])
    assert make_grid_priors([], []).shape == (0, 5)


# ---------------------------------------------------------------- GridCoder


def test_grid_coder_round_trip_float64_and_float32():
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS, dtype=torch.float64)
    coder = GridCoder()
    boxes = boxes_in_cells(priors, 0)
    deltas = coder.encode(boxes, priors)
    assert ((deltas[:, :2] >= 0) & (deltas[:, :2] < 1)).all()  # centre cell -> offsets in [0, 1)
    torch.testing.assert_close(coder.decode(deltas, priors), boxes, rtol=0, atol=1e-9)
    p32, b32 = priors.float(), boxes.float()
    torch.testing.assert_close(coder.decode(coder.encode(b32, p32), p32), b32, rtol=0, atol=1e-4)


def test_grid_coder_hand_values():
    priors = torch.tensor([[3.0, 1.0, 16.0, 20.0, 40.0]])
    deltas = torch.tensor([[0.5, 0.25, 0.0, float(np.log(2.0))]])
    # centre ((3 + 0.5) * 16, (1 + 0.25) * 16) = (56, 20); size (20, 80)
    assert GridCoder().decode(deltas, priors).tolist() == [[46.0, -20.0, 66.0, 60.0]]


def test_grid_coder_decode_broadcasts_over_batch_and_keeps_inputs():
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    deltas = torch.randn(3, priors.shape[0], 4, generator=torch.Generator().manual_seed(1))
    before = deltas.clone(), priors.clone()
    out = GridCoder().decode(deltas, priors)
    assert out.shape == deltas.shape
    for b in range(3):
        assert torch.equal(out[b], GridCoder().decode(deltas[b], priors))
    assert torch.equal(before[0], deltas) and torch.equal(before[1], priors)


def test_grid_coder_zero_size_boxes_encode_finite():
    priors = torch.tensor([[0.0, 0.0, 8.0, 8.0, 8.0]])
    deltas = GridCoder(eps=1e-3).encode(torch.tensor([[4.0, 4.0, 4.0, 6.0]]), priors)
    assert torch.isfinite(deltas).all() and deltas[0, 2].item() == pytest.approx(np.log(1e-3 / 8))


def test_grid_coder_numpy_and_half():
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    boxes = boxes_in_cells(priors, 2, torch.float32)
    coder = GridCoder()
    deltas = coder.encode(boxes.numpy(), priors.numpy())
    assert isinstance(deltas, np.ndarray) and deltas.dtype == np.float32
    np.testing.assert_array_equal(deltas, coder.encode(boxes, priors).numpy())
    out = coder.decode(deltas[None].astype(np.float16), priors.numpy())
    assert (
        isinstance(out, np.ndarray) and out.dtype == np.float16 and out.shape == (1, len(priors), 4)
    )


def test_grid_coder_wrong_shapes():
    priors = make_grid_priors(SIZES, STRIDES)
    coder = GridCoder()
    with pytest.raises(ValueError, match=r"priors must have shape \[N, 5\], got \(30, 4\)"):
        coder.decode(torch.zeros(30, 4), priors[:, :4])
    with pytest.raises(
        ValueError, match=r"deltas must have shape \[\.\.\., N, 4\] with N = len\(priors\) = 30"
    ):
        coder.decode(torch.zeros(2, 29, 4), priors)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\] with N = len\(priors\)"):
        coder.encode(torch.zeros(29, 4), priors)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 1, exclude_max=True),
            st.floats(0, 1, exclude_max=True),
            st.floats(0.05, 20),
            st.floats(0.05, 20),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_grid_coder_round_trip_property(rows):
    priors = make_grid_priors([(1, len(rows))], [32], [[(24.0, 40.0)]], dtype=torch.float64)
    t = torch.tensor(rows, dtype=torch.float64)
    centre = (priors[:, :2] + t[:, :2]) * 32
    size = t[:, 2:] * priors[:, 3:5]
    boxes = torch.cat((centre - size / 2, centre + size / 2), 1)
    coder = GridCoder()
    torch.testing.assert_close(
        coder.decode(coder.encode(boxes, priors), priors), boxes, rtol=0, atol=1e-9
    )


# ---------------------------------------------------------------- SSD default boxes and coder


def test_default_boxes_ssd300_count_order_and_values():
    boxes = make_default_boxes(**SSD300)
    assert boxes.shape == (8732, 4) and boxes.dtype == torch.float32
    s2 = float(np.sqrt(2.0))
    first = [
        [4, 4, 21, 21],
        [4, 4, np.sqrt(21 * 45), np.sqrt(21 * 45)],
        [4, 4, 21 * s2, 21 / s2],
        [4, 4, 21 / s2, 21 * s2],
    ]
    torch.testing.assert_close(boxes[:4], torch.tensor(first, dtype=torch.float32))
    assert boxes[4, :2].tolist() == [12.0, 4.0]  # next column x, same row y
    assert boxes[-1].tolist()[:2] == [150.0, 150.0]


def test_default_boxes_default_steps_and_clip():
    boxes = make_default_boxes([(2, 4)], (100, 200), [80.0, 120.0], [[3.0]])
    assert boxes.shape == (2 * 4 * 4, 4)
    assert boxes[0, :2].tolist() == [25.0, 25.0]  # steps (50, 50): centre of cell (0, 0)
    clipped = make_default_boxes([(2, 4)], (100, 200), [80.0, 120.0], [[3.0]], clip=True)
    x1y1 = clipped[:, :2] - clipped[:, 2:] / 2
    x2y2 = clipped[:, :2] + clipped[:, 2:] / 2
    assert (
        (x1y1 >= -1e-5).all()
        and (x2y2[:, 0] <= 200 + 1e-4).all()
        and (x2y2[:, 1] <= 100 + 1e-4).all()
    )
    with pytest.raises(ValueError, match="aspect_ratios must have one entry per level"):
        make_default_boxes([(2, 4)], (100, 200), [80.0, 120.0], [[3.0], [2.0]])


def test_ssd_coder_round_trip_and_variances():
    priors = make_default_boxes(**SSD300, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    centre = priors[:, :2] + priors[:, 2:] * (
        torch.rand(len(priors), 2, generator=g, dtype=torch.float64) - 0.5
    )
    size = priors[:, 2:] * torch.exp(
        torch.randn(len(priors), 2, generator=g, dtype=torch.float64) * 0.5
    )
    boxes = torch.cat((centre - size / 2, centre + size / 2), 1)
    coder = SSDCoder()
    torch.testing.assert_close(
        coder.decode(coder.encode(boxes, priors), priors), boxes, rtol=0, atol=1e-9
    )
    p32, b32 = priors.float(), boxes.float()
    torch.testing.assert_close(coder.decode(coder.encode(b32, p32), p32), b32, rtol=0, atol=1e-4)
    wide = SSDCoder(variances=(0.2, 0.4)).encode(boxes, priors)
    torch.testing.assert_close(wide * 2, coder.encode(boxes, priors))


def test_ssd_coder_decode_broadcasts_and_numpy():
    priors = make_default_boxes([(3, 3)], (90, 90), [30.0, 60.0], [[2.0]])
    deltas = torch.randn(2, len(priors), 4, generator=torch.Generator().manual_seed(4))
    out = SSDCoder().decode(deltas, priors)
    assert out.shape == (2, len(priors), 4) and torch.equal(
        out[1], SSDCoder().decode(deltas[1], priors)
    )
    np_out = SSDCoder().decode(deltas.numpy(), priors.numpy())
    assert isinstance(np_out, np.ndarray)
    np.testing.assert_array_equal(np_out, out.numpy())
    with pytest.raises(ValueError, match=r"priors must have shape \[N, 4\]"):
        SSDCoder().decode(deltas, torch.zeros(len(priors), 5))


# ---------------------------------------------------------------- tracing and ONNX


class _Decode(torch.nn.Module):
    def __init__(self, coder, priors):
        super().__init__()
        self.coder = coder
        self.register_buffer("priors", priors)

    def forward(self, deltas):
        return self.coder.decode(deltas, self.priors)


@pytest.mark.parametrize(
    ("coder", "priors"),
    [
        (GridCoder(), make_grid_priors(SIZES, STRIDES, ANCHORS)),
        (SSDCoder(), make_default_boxes([(3, 3)], (90, 90), [30.0, 60.0], [[2.0]])),
    ],
    ids=["grid", "ssd"],
)
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_decode_traces_without_warnings(coder, priors):
    module = _Decode(coder, priors)
    example = torch.randn(2, len(priors), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example)
    other = torch.randn(5, len(priors), 4)  # another batch size through the same graph
    torch.testing.assert_close(traced(other), module(other))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_grid_decode_exports_to_onnx_and_runs():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    priors = make_grid_priors(SIZES, STRIDES, ANCHORS)
    module = _Decode(GridCoder(), priors)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (torch.randn(1, len(priors), 4),),
            buffer,
            input_names=["deltas"],
            output_names=["boxes"],
            dynamic_axes={"deltas": {0: "batch"}},
            dynamo=False,
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    deltas = torch.randn(3, len(priors), 4)
    (got,) = session.run(None, {"deltas": deltas.numpy()})
    np.testing.assert_allclose(got, module(deltas).numpy(), rtol=1e-5, atol=1e-4)
