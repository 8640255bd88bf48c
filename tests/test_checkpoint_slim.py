"""A finished run keeps small checkpoints (#22 item 5): float16 EMA weights, the deploy record,
no optimiser state; such a checkpoint still deploys, evaluates and extends the run."""

from __future__ import annotations

import logging

import pytest
import torch

from detkit.api import build_trainer, resume, train
from detkit.config import load_config
from detkit.inference.predict import Detector
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(root, project, *extra: str) -> list[str]:
    return [
        f"root={root}", "num_train=8", "num_val=4", "epochs=1", "batch=4", "img_size=64",
        "workers=0", "quiet=true", "device=cpu", f"project={project}", "plots=false", *extra,
    ]  # fmt: skip


def test_a_finished_run_keeps_slim_checkpoints_that_still_extend_it(tiny_shapes, tmp_path, caplog):
    cfg = load_config(overrides=_overrides(tiny_shapes, tmp_path, "name=s"))
    trainer = build_trainer(cfg)
    run = trainer.fit()
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / name)
        assert ckpt["slim"] and "optimizer" not in ckpt and ckpt["model"] is ckpt["ema"]
        assert ckpt["deploy"]["class_names"] and ckpt["history"] and ckpt["scheduler"]
        floats = [t for t in ckpt["ema"].values() if t.is_floating_point()]
        assert floats and all(t.dtype == torch.float16 for t in floats)
    # the slim weights are the run's EMA weights rounded to float16
    last = load_checkpoint(run / "last.pt")
    for name, t in trainer.ema.module.state_dict().items():
        assert torch.equal(last["ema"][name], t.half() if t.is_floating_point() else t), name
    # they answer as the float32 EMA does, within float16 rounding
    image = torch.randint(0, 255, (48, 64, 3), dtype=torch.uint8).numpy()
    slim = Detector.from_checkpoint(run / "last.pt", device="cpu", conf=0.001)
    full = trainer.detector(conf=0.001)
    a, b = slim.predict(image), full.predict(image)
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.scores, b.scores, atol=2e-3, rtol=0)
    # --resume of the finished run extends it, from the EMA weights
    with caplog.at_level(logging.INFO, logger="detkit"):
        assert resume(run / "last.pt", ["epochs=2"]) == run
    assert "the optimiser restarts from the EMA weights" in caplog.text
    extended = load_checkpoint(run / "last.pt")
    assert extended["epoch"] == 2 and extended["slim"] and len(extended["history"]) == 2
    assert extended["ema_updates"] == 2 * last["ema_updates"]


def test_a_stopped_run_keeps_everything_to_resume_exactly(tiny_shapes, tmp_path):
    run = train(load_config(overrides=_overrides(tiny_shapes, tmp_path, "epochs=2", "max_steps=2")))
    ckpt = load_checkpoint(run / "last.pt")
    assert "slim" not in ckpt and ckpt["optimizer"]["state"]
    floats = [t for t in ckpt["ema"].values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in floats)


@pytest.mark.slow
def test_best_pt_of_yolo_n_is_at_most_10_mb(tiny_shapes, tmp_path):
    run = train(load_config(overrides=_overrides(tiny_shapes, tmp_path, "model=yolo_n")))
    for name in ("best.pt", "last.pt"):
        size = (run / name).stat().st_size
        assert size <= 10 * 2**20, f"{name}: {size / 2**20:.1f} MiB"
    params = sum(t.numel() for t in load_checkpoint(run / "best.pt")["ema"].values())
    assert (run / "best.pt").stat().st_size < 2 * params + 2**20  # 2 bytes a number, one copy
