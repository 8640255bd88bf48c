"""The GPU rules, checked on CPU with the capability queries replaced: native bf16 only, the
training device asked (not the current one), cudnn.benchmark scoped, LOCAL_RANK never the
global rank."""

from __future__ import annotations

from types import SimpleNamespace

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


def test_amp_dtype_can_be_forced(gpus, caplog):
    """``amp_dtype=fp16`` tries the V100/T4 path on a bf16 card; ``bf16`` where it is emulated
    is honoured with a warning; an unknown name is refused, even on CPU."""
    a100, v100 = torch.device("cuda", 1), torch.device("cuda", 0)
    assert dev.amp_dtype(a100, True, "fp16") == torch.float16
    assert dev.amp_dtype(a100, True, "bf16") == torch.bfloat16
    assert dev.amp_dtype(v100, True, "auto") == torch.float16
    assert dev.amp_dtype(v100, True, "bf16") == torch.bfloat16
    assert "whose bf16 is emulated" in caplog.text
    assert dev.amp_dtype(a100, False, "fp16") is None
    with pytest.raises(ValueError, match=r"train.amp_dtype='fp8' unknown; choose one of auto"):
        dev.amp_dtype(torch.device("cpu"), True, "fp8")


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


@pytest.fixture
def cuda_machine(monkeypatch):
    """``count`` visible GPUs (default 2), the current-device calls recorded."""
    from detkit.engine import distributed as ddp

    machine = SimpleNamespace(count=2, current=[], joined={})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: machine.count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: machine.current.append(torch.device(d)))
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda **kw: machine.joined.update(kw))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    return machine


def test_cuda_1_in_one_process_is_made_the_current_device(cuda_machine):
    """Else pinned-memory threads and un-placed CUDA calls open a context on cuda:0 too."""
    from detkit.engine.distributed import init_distributed

    current = cuda_machine.current
    ctx, device = init_distributed("cuda:1")
    assert device == torch.device("cuda", 1) and not ctx.enabled
    assert current == [torch.device("cuda", 1)]
    init_distributed("cuda")  # no index: the current device stays as it is
    assert current == [torch.device("cuda", 1)]


@pytest.mark.parametrize("local", [{"LOCAL_RANK": "3"}, {"SLURM_LOCALID": "3"}])
def test_slurm_gpus_per_task_one_gpu_per_process(cuda_machine, monkeypatch, local):
    """``srun --ntasks-per-node 4 --gpus-per-task=1``: each process sees one GPU, its own,
    whatever its local rank (LOCAL_RANK=3 and one visible GPU was refused)."""
    from detkit.engine.distributed import init_distributed

    current, joined = cuda_machine.current, cuda_machine.joined
    cuda_machine.count = 1
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "7")
    for key, value in local.items():
        monkeypatch.setenv(key, value)
    ctx, device = init_distributed("")
    assert (ctx.rank, ctx.local_rank, device) == (7, 3, torch.device("cuda", 0))
    assert current == [torch.device("cuda", 0)] and joined["backend"] == "nccl"
