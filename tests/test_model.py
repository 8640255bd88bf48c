"""The spine grid detector: shapes, gradients, first-step losses, one-batch overfit."""

from __future__ import annotations

import math

import pytest
import torch

from detkit.config import load_config
from detkit.config.build import build_loss, build_model, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(num_classes=4):
    torch.manual_seed(0)
    return build_model(load_config().model, num_classes)


@pytest.mark.parametrize(("h", "w"), [(256, 256), (320, 320), (416, 416), (224, 352)])
def test_output_rows_match_priors(h, w):
    model = _model().eval()
    with torch.no_grad():
        raw = model(torch.rand(2, 3, h, w))
    priors = model.priors(h, w)
    assert raw.shape == (2, priors.shape[0], 5 + 4)
    assert priors.shape[0] == sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32))


def test_head_rows_follow_prior_order():
    """Row r of the output is the head map at its prior's level and cell (gy, gx)."""
    model = _model().eval()
    maps = []
    for head in model.heads:
        head.register_forward_hook(lambda _m, _i, out: maps.append(out))
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96))
    priors = model.priors(64, 96)
    for r in torch.randperm(priors.shape[0])[:50].tolist():
        gx, gy, stride = (int(v) for v in priors[r, :3])
        level = model.strides.index(stride)
        assert torch.equal(raw[0, r], maps[level][0, :, gy, gx])


def test_gradients_reach_every_parameter():
    model = _model()
    raw = model(torch.rand(2, 3, 64, 64))
    loss_fn = build_loss(model, load_config().model)
    targets = torch.tensor([[0, 1, 5.0, 5.0, 30.0, 40.0], [1, 3, 20.0, 10.0, 60.0, 50.0]])
    loss = loss_fn(raw, targets, model.priors(64, 64), model.feature_sizes(64, 64)).sum()
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing


def test_first_class_loss_is_ln_c():
    model = _model(num_classes=5).eval()
    raw = model(torch.rand(1, 3, 128, 128))
    loss_fn = build_loss(model, load_config().model)
    targets = torch.tensor([[0, 2, 30.0, 30.0, 70.0, 80.0]])
    parts = loss_fn(raw, targets, model.priors(128, 128), model.feature_sizes(128, 128)).detach()
    assert parts[2] == pytest.approx(math.log(5), rel=0.05)
    assert torch.sigmoid(raw[..., 4]).mean().item() == pytest.approx(0.01, rel=0.3)


def test_no_weight_decay_on_norms_and_biases():
    model = _model()
    decay, no_decay = param_groups(model, 5e-4)
    assert all(p.ndim == 4 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = _model(num_classes=3)
    loss_fn = build_loss(model, load_config().model)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor(
        [
            [0, 0, 4.0, 6.0, 20.0, 30.0],
            [0, 2, 30.0, 30.0, 60.0, 62.0],
            [1, 1, 10.0, 12.0, 50.0, 40.0],
        ]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    priors, sizes = model.priors(64, 64), model.feature_sizes(64, 64)
    losses = []
    for _ in range(150):
        loss = loss_fn(model(images), targets, priors, sizes).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0]
