"""The small pieces of detkit.engine.distributed that run without a process group."""

from __future__ import annotations

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
    assert seen == {"backend": "gloo", "rank": 1, "world_size": 2, "timeout": timedelta(minutes=90)}


def test_dist_timeout_must_be_positive():
    assert load_config(overrides=["dist_timeout=5"]).train.dist_timeout == 5
    with pytest.raises(ConfigError, match="dist_timeout"):
        load_config(overrides=["dist_timeout=0"])


def test_one_process_gathers_its_own_object():
    ctx = ddp.DistContext()
    assert ddp.gather_to_main({"a": 1}, ctx) == [{"a": 1}]
