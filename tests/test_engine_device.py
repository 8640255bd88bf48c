"""The GPU rules, checked on CPU with the capability queries replaced: native bf16 only, the
training device asked (not the current one), cudnn.benchmark scoped, LOCAL_RANK never the
global rank."""

from __future__ import annotations

import pytest
import torch

from detkit.engine import device as dev
from detkit.engine.distributed import local_rank_from_env


@pytest.fixture
def gpus(monkeypatch):
    """cuda:0 a V100 (7.0, bf16 emulated), cuda:1 an A100 (8.0)."""
    capability = {0: (7, 0), 1: (8, 0)}
    asked = []

    def get_device_capability(device=None):
        asked.append(device)
        return capability[torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation too
    return asked


def test_bf16_only_where_native_on_the_training_device(gpus):
    assert dev.amp_dtype(torch.device("cuda", 0), True) == torch.float16
    assert dev.amp_dtype(torch.device("cuda", 1), True) == torch.bfloat16
    assert gpus == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert dev.amp_dtype(torch.device("cuda", 1), False) is None
    assert dev.amp_dtype(torch.device("cpu"), True) is None


@pytest.mark.parametrize("enabled", [False, True])
def test_cudnn_benchmark_is_scoped(enabled):
    before = torch.backends.cudnn.benchmark
    with dev.cudnn_benchmark(enabled):
        assert torch.backends.cudnn.benchmark == (enabled or before)
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.parametrize(
    ("env", "rank", "gpus", "expected"),
    [
        ({"LOCAL_RANK": "3"}, 11, 8, 3),  # torchrun's value
        ({"LOCAL_WORLD_SIZE": "8"}, 9, 8, 1),
        ({}, 9, 8, 1),  # rank 9 of two 8-GPU machines: cuda:1, not cuda:9
        ({}, 5, 0, 0),  # CPU ranks
    ],
)
def test_local_rank(env, rank, gpus, expected):
    assert local_rank_from_env(env, rank, gpus) == expected


def test_local_rank_beyond_the_gpus_is_refused():
    with pytest.raises(ValueError, match=r"LOCAL_RANK=4 but this machine has 4 GPU"):
        local_rank_from_env({"LOCAL_RANK": "4"}, 4, 4)
