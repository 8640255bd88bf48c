"""The small pieces of detkit.engine.distributed that run without a process group."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest

from detkit.config import ConfigError, load_config
from detkit.engine import distributed as ddp


def test_dist_timeout_reaches_init_process_group(monkeypatch):
    seen = {}
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(ddp.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx, device = ddp.init_distributed("cpu", timeout_minutes=90)
    assert (ctx.rank, ctx.world_size, device.type) == (1, 2, "cpu")
    timeout = timedelta(minutes=90)
    assert seen == {
        "backend": "gloo",
        "rank": 1,
        "world_size": 2,
        "timeout": timeout,
        "store": None,
    }


def test_no_attempt_prefix_outside_torchelastic(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert ddp.attempt_store(0, 2, timedelta(minutes=1)) is None


def test_dist_timeout_must_be_positive():
    assert load_config(overrides=["dist_timeout=5"]).train.dist_timeout == 5
    with pytest.raises(ConfigError, match="dist_timeout"):
        load_config(overrides=["dist_timeout=0"])


def test_one_process_gathers_its_own_object():
    ctx = ddp.DistContext()
    assert ddp.gather_to_main({"a": 1}, ctx) == [{"a": 1}]


def _on_main_rank(rank: int, port: int, root, out_dir) -> None:
    import torch

    from detkit.api import build_trainer
    from detkit.config import build

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    calls = []
    for name in ("build_dataset", "fit_auto_anchors"):
        original = getattr(build, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(build, name, counted)
    out = {}
    try:
        trainer = build_trainer(load_config(overrides=[
            "model=yolo_s", "model.widths=[8,16,16,16,16]", f"root={root}",
            "num_train=8", "num_val=2", "batch=4", "img_size=64", "workers=0", "device=cpu",
            "quiet=true", f"project={out_dir / 'runs'}", "plots=false",
        ]))  # fmt: skip
        ctx = trainer.ctx
        out["anchors"] = trainer.config["model"]["anchors"]
        out["train_ids"] = trainer.train_set.image_ids
        out["calls"] = calls
        out["value"] = ddp.on_main(lambda: {"made on": rank}, ctx)
        try:
            ddp.on_main(lambda: int("not a number"), ctx)
        except ValueError as e:
            out["error"] = str(e)
        torch.save(out, out_dir / f"rank{rank}.pt")
    finally:
        ddp.cleanup()


@pytest.mark.slow  # over 5 s: two processes start torch
def test_splits_and_anchors_are_made_on_rank_0_and_broadcast(tmp_path):
    import torch
    import torch.multiprocessing as mp

    from detkit.data import generate_shapes

    root = generate_shapes(tmp_path / "shapes", num_train=8, num_val=2, seed=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_on_main_rank, args=(port, root, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["calls"] == ["build_dataset", "build_dataset", "fit_auto_anchors"]
    assert r1["calls"] == []  # rank 1 opened nothing and fitted nothing
    assert r0["anchors"] == r1["anchors"] and len(r0["anchors"]) == 3  # fitted: 3 levels
    assert r0["train_ids"] == r1["train_ids"] and len(r1["train_ids"]) == 8
    assert r0["value"] == r1["value"] == {"made on": 0}
    assert r0["error"] == r1["error"] == "invalid literal for int() with base 10: 'not a number'"


def test_epoch_speed_counts_images_and_the_wait_for_data():
    import time
    from types import SimpleNamespace

    from detkit.engine.feed import EpochSpeed, speeds_line, until_signal
    from detkit.engine.safety import StopSignals

    def slow_loader():
        for _ in range(3):
            time.sleep(0.05)  # the loader's time: waited for
            yield SimpleNamespace(paths=["a.jpg", "b.jpg"], failed=[])

    speed = EpochSpeed()
    for _ in until_signal(slow_loader(), StopSignals(), speed):
        time.sleep(0.05)  # the step's time: not waiting
    per_s, wait = speed.summary()
    assert speed.images == 6 and 0.14 < speed.wait < 0.6  # (a loaded machine oversleeps)
    assert 0.25 < wait < 0.75 and 6 / 1.2 < per_s < 6 / 0.29
    assert speeds_line([(10.0, 0.1), (40.0, 0.0)]).endswith("(slowest: rank 0, 0.25x the fastest)")
