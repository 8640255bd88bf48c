"""Data-parallel training under ``torchrun``: process group (NCCL for GPUs, gloo for CPUs), DDP
wrapping, small collectives. Each is a no-op, or the identity, in a single process; under DDP
every rank must call it at the same point."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from detkit.engine.device import select_device

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``local_rank`` (rank on this machine) picks the GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, evaluates and writes files."""
        return self.rank == 0


def init_distributed(
    device_spec: str = "", timeout_minutes: float = 30.0
) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group: ``(context, device)``. ``device_spec="cpu"`` means gloo, a
    CUDA spec (or ``""`` with CUDA) NCCL on ``cuda:LOCAL_RANK`` (an explicit index is ignored);
    a single process gets ``DistContext()`` and :func:`select_device` of ``device_spec``.
    ``timeout_minutes``: how long a collective waits for the slowest rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = select_device(device_spec)
        if device.type == "cuda" and device.index is not None:
            # the current GPU is where pinned-memory threads, RNG queries and un-placed CUDA
            # calls go: without this, device=cuda:1 also opens a context on cuda:0
            torch.cuda.set_device(device)
        return DistContext(), device
    rank = int(os.environ["RANK"])
    requested = select_device(device_spec)  # raises when CUDA is asked for but missing
    if dist.is_initialized():  # joined already (``--resume auto`` joins before deciding)
        joined = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
        if device_spec and requested.type != joined.type:
            log.warning("device=%s ignored: this process group runs on %s", device_spec, joined)
        requested = joined
    gpus = torch.cuda.device_count() if requested.type == "cuda" else 0
    local_rank = local_rank_from_env(dict(os.environ), rank, gpus)
    if requested.type == "cuda":
        index = gpu_index(local_rank, gpus)
        if requested.index not in (None, index):
            log.warning("device=%s ignored under torchrun: rank uses cuda:%d", device_spec, index)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        store = attempt_store(rank, world_size, timeout)
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timeout, store=store
        )
    return DistContext(rank, world_size, local_rank), device


def attempt_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store | None:
    """Under an elastic restart, the ``env://`` store prefixed by the attempt number (torchrun's
    store outlives a failed attempt: a dead rank's address must not be read), else None."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    return dist.PrefixStore(f"detkit/attempt_{attempt}", store)


def local_rank_from_env(env: dict[str, str], rank: int, gpus: int) -> int:
    """This process's rank on its machine: ``LOCAL_RANK``, else ``SLURM_LOCALID``, else
    ``rank % LOCAL_WORLD_SIZE``, else ``rank % gpus`` (``gpus``: CUDA devices seen, 0 on CPU).

    Raises:
        ValueError: the local rank names a GPU this process does not see.

    Example:
        >>> local_rank_from_env({"LOCAL_WORLD_SIZE": "8"}, 9, 8)
        1
    """
    if "LOCAL_RANK" in env:
        local_rank = int(env["LOCAL_RANK"])
    elif "SLURM_LOCALID" in env:
        local_rank = int(env["SLURM_LOCALID"])
    elif "LOCAL_WORLD_SIZE" in env:
        local_rank = rank % int(env["LOCAL_WORLD_SIZE"])
    else:
        local_rank = rank % gpus if gpus else 0
        log.warning("LOCAL_RANK is not set (launch with torchrun): using local rank %d", local_rank)
    if gpus:
        gpu_index(local_rank, gpus)  # refuse a GPU that is not there, here
    return local_rank


def gpu_index(local_rank: int, gpus: int) -> int:
    """The CUDA index of a process with this local rank seeing ``gpus`` devices: one visible
    GPU (``CUDA_VISIBLE_DEVICES`` per process) is its own whatever the local rank.

    Raises:
        ValueError: several GPUs are visible and the local rank is not one of them.

    Example:
        >>> gpu_index(3, 8), gpu_index(3, 1)
        (3, 0)
    """
    if gpus == 1:
        return 0
    if local_rank >= gpus:
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this machine has {gpus} GPU(s): start at most "
            f"{gpus} processes per machine (torchrun --nproc_per_node {gpus})"
        )
    return local_rank


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch: int, ctx: DistContext) -> int:
    """This rank's share of the global ``batch``.

    Raises:
        ValueError: ``batch`` does not split evenly over the ranks.

    Example:
        >>> per_rank_batch(32, DistContext(0, 4, 0))
        8
    """
    if batch % ctx.world_size:
        raise ValueError(
            f"batch={batch} is the global batch and must divide evenly over "
            f"{ctx.world_size} processes; use a multiple of {ctx.world_size}"
        )
    return batch // ctx.world_size


def prepare_model(
    model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool
) -> nn.Module:
    """``model`` with SyncBatchNorm when asked (CUDA only; before the optimiser and EMA)."""
    if not (ctx.enabled and sync_bn):
        return model
    if device.type != "cuda":
        log.warning("sync_bn=true ignored: SyncBatchNorm needs CUDA; ranks keep their own BN stats")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    if not ctx.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def max_over_ranks_(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise maximum of a tensor over ranks, in place on its device (no host sync)."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def sum_over_ranks(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise float64 sum of ``values`` over ranks."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``value`` over ranks (a new tensor under DDP)."""
    if not ctx.enabled:
        return value
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / ctx.world_size


def broadcast_module(module: nn.Module, ctx: DistContext, buffers_only: bool = False) -> None:
    """Overwrite ``module``'s buffers (BN statistics, which each rank's forward moves apart)
    and, unless ``buffers_only``, its parameters with rank 0's, in place."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in module.buffers() if buffers_only else module.state_dict().values():
            dist.broadcast(t, src=0)


def gather_to_main(obj: T, ctx: DistContext) -> list[T] | None:
    """Every rank's picklable ``obj`` on rank 0, by rank (None on the other ranks)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def on_main(make: Callable[[], T], ctx: DistContext) -> T:
    """``make()`` on rank 0 alone; its (picklable) result, or its exception, on every rank."""
    if not ctx.enabled:
        return make()
    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box = [(True, make())]
        except Exception as e:  # sent to the other ranks, then raised here too
            box = [(False, e)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def all_gather(obj: T, ctx: DistContext) -> list[T]:
    """Every rank's picklable ``obj``, by rank, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
