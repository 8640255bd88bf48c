"""Inference-time folding of eval-mode batch norm into the conv before it (one affine map:
weights scaled per output channel, bias absorbing the shift); training never sees a folded model."""

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
    """Fold, in place, each conv/BN pair among ``module``'s direct children: ``conv``/``bn``,
    ``conv<i>``/``bn<i>`` (torchvision ResNets) or consecutive ``nn.Sequential`` entries."""
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
    """An eval-mode copy of ``model``, every conv/BN pair folded (equal up to float rounding)."""
    fused = copy.deepcopy(model).eval()
    for m in list(fused.modules()):
        _fuse_children(m)
    return fused
