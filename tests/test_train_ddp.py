"""DDP on CPU with gloo: 2 processes keep identical weights, average their gradients exactly, and
track a single-process run with the same global batch; torchrun drives the real CLI.

The comparison with the single process is within a tolerance, not exact, by design: without
SyncBatchNorm (CUDA only) each rank normalises with its own half batch's statistics. The exact
check is against the mean of the two ranks' gradients, computed here from the same shards, each
loss divided by the mean over ranks of their positives (the global count over 2).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from detkit.api import build_trainer
from detkit.config import load_config
from detkit.config.build import build_loss, build_model
from detkit.data import (
    DetectionDataset,
    build_loader,
    build_transforms,
    generate_shapes,
    images_to_float,
    set_loader_epoch,
)
from detkit.engine import distributed as ddp
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
STEPS = 4


def _overrides(root, project) -> list[str]:
    return [
        f"root={root}", "num_train=32", "num_val=4", "epochs=2", "batch=16", "img_size=96",
        "workers=0", "quiet=true", "device=cpu", "model.widths=[8,16,16,16,16]",
        "model.neck_width=16", f"project={project}", "plots=false", "optimizer=sgd",
        "lr=0.002", "warmup_epochs=0", "grad_clip=0", "eval_every=10", f"max_steps={STEPS}",
    ]  # fmt: skip


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _train_recording(root, project, out: Path) -> None:
    """Train STEPS updates; save the flat parameters before and after every update."""
    torch.set_num_threads(1)
    trainer = build_trainer(load_config(overrides=_overrides(root, project)))
    snapshots = [_flat(trainer.model)]
    update = trainer.updater.step

    def recording(pending, state, signum):
        signum = update(pending, state, signum)
        snapshots.append(_flat(trainer.model))
        return signum

    trainer.updater.step = recording
    trainer.fit()
    torch.save(snapshots, out)


def _rank_main(rank: int, world: int, port: int, root, project, out_dir: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    try:
        _train_recording(root, project, out_dir / f"rank{rank}.pt")
    finally:
        ddp.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _oracle_first_update(root, project) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial weights, and the weights after one SGD update on the mean of the gradients of
    rank 0's and rank 1's first shards (what DDP must compute)."""
    cfg = load_config(overrides=[*_overrides(root, project), "name=oracle"])
    trainer = build_trainer(cfg)
    t, model = cfg.train, trainer.model
    ds = DetectionDataset(trainer.train_set, build_transforms(t.img_size, True, hflip=t.hflip))
    size, batches = t.img_size, []
    for rank in (0, 1):
        loader = build_loader(ds, t.batch // 2, True, 0, t.seed, rank=rank, world_size=2)
        set_loader_epoch(loader, 0)
        batches.append(next(iter(loader)))
    counts = []

    def record(n):
        counts.append(float(n))
        return n

    def loss_of(batch, reduce):
        raw = model(images_to_float(batch.images))
        sums, num_pos = trainer.criterion.sums(raw, batch.targets, model.priors(size, size), model.feature_sizes(size, size))  # fmt: skip
        loss = (sums / reduce(num_pos).clamp(min=1.0)).sum()
        return loss, counts[-1] if counts else None

    shard_positives = [loss_of(b, record)[1] for b in batches]
    mean = sum(shard_positives) / 2
    grads = []
    for batch in batches:
        model.zero_grad()
        loss_of(batch, lambda n: torch.full_like(n, mean))[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for p, g0, g1 in zip(model.parameters(), *grads, strict=True):
        p.grad = (g0 + g1) / 2
    before = _flat(model)
    trainer.optimizer.step()
    return before, _flat(model)


@pytest.mark.slow  # over 5 s: two processes or a subprocess start torch
def test_two_gloo_ranks_match_each_other_the_mean_gradient_and_one_process(shapes32, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(
        _rank_main, args=(2, _free_port(), shapes32, tmp_path / "ddp", out), nprocs=2, join=True
    )
    _train_recording(shapes32, tmp_path / "single", out / "single.pt")
    rank0, rank1, single = (torch.load(out / f"{n}.pt") for n in ("rank0", "rank1", "single"))
    assert len(rank0) == len(rank1) == len(single) == STEPS + 1

    for a, b in zip(rank0, rank1, strict=True):
        assert torch.equal(a, b)  # identical weights on both ranks after every update

    before, expected = _oracle_first_update(shapes32, tmp_path / "oracle")
    assert torch.equal(before, rank0[0])
    torch.testing.assert_close(rank0[1], expected, rtol=1e-5, atol=1e-7)

    for i in range(1, STEPS + 1):
        dist_update, single_update = rank0[i] - rank0[i - 1], single[i] - single[i - 1]
        assert F.cosine_similarity(dist_update, single_update, dim=0) > 0.85, i
        assert 0.75 < dist_update.norm() / single_update.norm() < 1.33, i
    total = F.cosine_similarity(rank0[-1] - rank0[0], single[-1] - single[0], dim=0)
    assert total > 0.9


@pytest.mark.slow  # over 5 s: two processes or a subprocess start torch
def test_torchrun_cli_two_processes(shapes32, tmp_path):
    """``torchrun --nproc_per_node 2 tools/train.py``: one run folder, written by rank 0."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tools/train.py"), *_overrides(shapes32, tmp_path / "runs"), "name=tr",
        "max_steps=0", "epochs=1", "eval_every=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tr"], output
    assert done.stdout.count("run folder:") == 1, output  # printed by rank 0 alone
    ckpt = load_checkpoint(tmp_path / "runs/tr/last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    assert ckpt["step"] == 2  # 32 images / global batch 16, each rank 8 per step
    assert ckpt["history"][0]["mAP50"] >= 0, ckpt["history"]  # rank 0 evaluated


SIZE = 64
# rank 0's two images hold objects; rank 1's two hold none
TARGETS = (
    torch.tensor([[0, 1, 4.0, 6.0, 30.0, 40.0], [1, 0, 20.0, 10.0, 60.0, 50.0]]),
    torch.zeros((0, 6)),
)


def _tiny_model_and_loss():
    cfg = load_config(overrides=["model.widths=[8,16,16,16,16]", "model.neck_width=16"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    raw = model(torch.rand(2, 3, SIZE, SIZE)).detach()  # the same on both ranks
    return model, build_loss(model, cfg.model), raw


def _loss(model, criterion, raw, targets) -> torch.Tensor:
    priors, sizes = model.priors(SIZE, SIZE), model.feature_sizes(SIZE, SIZE)
    return criterion(raw, targets, priors, sizes).sum()


def _positives_rank(rank: int, port: int, out_dir: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model, criterion, raw = _tiny_model_and_loss()
        ctx = ddp.DistContext(rank, 2, rank)
        priors, sizes = model.priors(SIZE, SIZE), model.feature_sizes(SIZE, SIZE)
        sums, num_pos = criterion.sums(raw, TARGETS[rank], priors, sizes)  # as train_one_epoch
        shared = (sums / ddp.mean_over_ranks(num_pos, ctx).clamp(min=1.0)).sum()
        own = _loss(model, criterion, raw, TARGETS[rank])
        torch.save({"shared": shared, "own": own}, out_dir / f"rank{rank}.pt")
    finally:
        ddp.cleanup()


@pytest.mark.slow
def test_loss_is_normalised_by_the_global_positive_count(tmp_path):
    """A rank without objects divides its (objectness) loss by the mean of the ranks' positive
    counts, not by 1; the ranks' mean loss equals the one-process loss of both shards."""
    mp.spawn(_positives_rank, args=(_free_port(), tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    model, criterion, raw = _tiny_model_and_loss()
    positives = criterion.assign(TARGETS[0], model.feature_sizes(SIZE, SIZE)).num_pos
    assert positives >= 2
    # rank 1 alone divided its summed loss by 1 (no positives): the spike
    torch.testing.assert_close(r1["shared"], r1["own"] / (positives / 2))
    torch.testing.assert_close(r0["shared"], r0["own"] * 2)  # P / (P / 2)
    both = torch.cat([TARGETS[0], TARGETS[1]])
    whole = _loss(model, criterion, torch.cat([raw, raw]), both)  # 4 images, one process
    torch.testing.assert_close((r0["shared"] + r1["shared"]) / 2, whole)


def _validation_overrides(root, project) -> list[str]:
    # 5 val images over 2 ranks: rank 1's share is padded with a repeat of image 0
    return [*_overrides(root, project), "num_val=5", "val_batch=2"]


def _validate_rank(rank: int, port: int, root, project, out_dir: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        trainer = build_trainer(load_config(overrides=_validation_overrides(root, project)))
        if rank == 1:  # BN statistics that drifted on this rank: validation must use rank 0's
            for buf in trainer.ema.module.buffers():
                if buf.is_floating_point():
                    buf.mul_(1.5)
        metrics = trainer.validate()
        images = [i for b in trainer.val_loader for i in b.image_ids]
        torch.save({"metrics": metrics, "images": images}, out_dir / f"val{rank}.pt")
    finally:
        ddp.cleanup()


@pytest.mark.slow  # over 5 s: two processes start torch
def test_sharded_validation_equals_one_process(tmp_path):
    """2 gloo ranks each predict their share of a 5-image split; rank 0 scores the gathered
    predictions: the 12 COCO numbers equal one process validating the whole split."""
    root = generate_shapes(tmp_path / "shapes", num_train=32, num_val=5, seed=13)
    mp.spawn(_validate_rank, args=(_free_port(), root, tmp_path / "ddp", tmp_path), nprocs=2, join=True)  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"val{r}.pt") for r in (0, 1))
    assert r1["metrics"] == {}  # rank 0 alone scores
    ids = sorted(set(r0["images"]) | set(r1["images"]))
    assert len(r0["images"]) == len(r1["images"]) == 3 and len(ids) == 5  # one padded repeat
    trainer = build_trainer(load_config(overrides=_validation_overrides(root, tmp_path / "one")))
    single = trainer.validate()
    sharded = r0["metrics"]
    stats = [k for k in single if not k.startswith("val_")]
    assert len(stats) == 14 and single["mAP50"] > 0, single  # 12 COCO numbers, P and R
    assert {k: sharded[k] for k in stats} == {k: single[k] for k in stats}  # exact
    for k in ("val_box", "val_obj", "val_cls"):  # other batches: close, not equal
        assert math.isfinite(sharded[k]) and sharded[k] == pytest.approx(single[k], rel=0.3)
