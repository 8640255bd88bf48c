"""Batch norm folded into convolutions: same outputs, no BN left, the caller's model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.config import load_config
from detkit.config.build import build_model
from detkit.models.fuse import fuse_conv_bn


def _trained_like(model: nn.Module) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, as training would."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize(
    "name",
    ["yolo_tiny", "yolo_n", "ssdlite320", "yolo_n block=c2f head_branches=dw"],
)
def test_fused_model_gives_the_same_raw_output(name: str, one_thread: None) -> None:
    model_name, *options = name.split()
    cfg = load_config(overrides=[f"model={model_name}", *options])
    model = _trained_like(build_model(cfg.model, num_classes=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_conv_bn(model)
    x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 10  # the original keeps its BN layers and weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_detector_runs_the_folded_copy(one_thread: None) -> None:
    from detkit.inference.predict import Detector

    cfg = load_config(overrides=["model=yolo_tiny"])
    model = _trained_like(build_model(cfg.model, num_classes=2)).train()
    det = Detector(model, ["a", "b"], img_size=64)
    assert model.training  # the caller's model is not switched to eval mode
    assert not any(isinstance(m, nn.BatchNorm2d) for m in det.model.modules())


def test_sync_batch_norm_is_folded_too(one_thread: None) -> None:
    """A DDP run with sync_bn=true validates an EMA whose BN layers are SyncBatchNorm: folded
    like BatchNorm2d (it was left unfolded), same outputs."""
    cfg = load_config(overrides=["model=yolo_n"])
    model = _trained_like(build_model(cfg.model, num_classes=3))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()  # conversion works on CPU
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) > 10
    fused = fuse_conv_bn(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm | nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=1e-4, atol=1e-4)
