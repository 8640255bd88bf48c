"""Inference-time folding of batch norm into the convolution before it.

A Conv2d followed by an eval-mode BatchNorm2d computes ``gamma * (conv(x) - mean) / sqrt(var +
eps) + beta``: the same affine map as one Conv2d whose weights are scaled per output channel and
whose bias absorbs the shift. Folding removes one pass over every feature map at inference;
training never sees a folded model (the batch statistics would be lost).
"""

from __future__ import annotations

import copy
import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_ATTRIBUTE_PAIRS = (("conv", "bn"), ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
# SyncBatchNorm (a DDP run with sync_bn=true: the EMA its validation runs is converted too) is
# the same affine map in eval mode
_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _fuse_children(module: nn.Module) -> int:
    """Fold each (Conv2d, BatchNorm2d or SyncBatchNorm) pair among ``module``'s direct children,
    in place.

    Pairs are a ``conv``/``bn`` attribute pair (``ConvBNAct``), ``conv<i>``/``bn<i>`` (the
    torchvision ResNet's stem and blocks) or consecutive entries of an ``nn.Sequential``
    (torchvision's ``Conv2dNormActivation`` and downsamplers too). Returns how many pairs were
    folded.
    """
    folded = 0
    for c, b in _ATTRIBUTE_PAIRS:
        conv, bn = getattr(module, c, None), getattr(module, b, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, _BATCH_NORMS):
            setattr(module, c, fuse_conv_bn_eval(conv, bn))
            setattr(module, b, nn.Identity())
            folded += 1
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _BATCH_NORMS):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
                folded += 1
    return folded


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair folded into one conv.

    The input model is not changed. Outputs equal the unfolded eval-mode model's up to float
    rounding (about 1e-5 relative in float32).

    Args:
        model: any module; only the attribute pairs of :func:`_fuse_children` and
            consecutive pairs inside ``nn.Sequential`` are folded.

    Returns:
        The folded copy (eval mode, no gradients needed).
    """
    fused = copy.deepcopy(model).eval()
    for m in list(fused.modules()):
        _fuse_children(m)
    return fused
