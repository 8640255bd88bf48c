"""Loop features: gradient accumulation, multi-scale, validation loss, early stopping, what the
user sees (results.png, TensorBoard, summary, quiet) and the ``--device`` flag."""

from __future__ import annotations

import logging
import math
import sys
import types

import pytest
import torch

from detkit.api import build_trainer, resume
from detkit.cli import main
from detkit.config import ConfigError, load_config
from detkit.data import images_to_float, set_loader_epoch
from detkit.engine.resume import ResumeError
from detkit.engine.trainer import Trainer
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.widths=[8,16,16,16,16]", "model.neck_width=16", "device=cpu", "workers=0"]


def _overrides(root, project, *extra: str) -> list[str]:
    """The tiny run's keys; with another model named, the TINY sizes it has no use for are left
    out (a key that would do nothing is refused)."""
    model = next((e.split("=")[1] for e in extra if e.startswith("model=")), "yolo_tiny")
    idle = (
        () if model == "yolo_tiny" else ("model.neck",) if model.startswith("yolo") else ("model.",)
    )
    tiny = [k for k in TINY if not k.startswith(idle)]
    return [
        f"root={root}", "num_train=16", "num_val=4", "epochs=2", "batch=4", "img_size=64",
        "quiet=true", f"project={project}", "plots=false", *tiny, *extra,
    ]  # fmt: skip


def _trainer(root, project, *extra: str) -> Trainer:
    return build_trainer(load_config(overrides=_overrides(root, project, *extra)))


def test_accumulation_updates_with_the_mean_gradient_of_its_batches(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "nominal_batch=8", "optimizer=sgd", "grad_clip=0")
    assert trainer.opts.accumulate == 2
    reference = _trainer(shapes, tmp_path, "optimizer=sgd", "name=ref")  # same seed, same init
    model, size = reference.model, 64
    set_loader_epoch(reference.train_loader, 0)
    grads = []
    for batch, _ in zip(reference.train_loader, range(2), strict=False):
        model.zero_grad()
        raw = model(images_to_float(batch.images))
        loss = reference.criterion(raw, batch.targets, model.priors(size, size), model.feature_sizes(size, size)).sum()  # fmt: skip
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    stepped = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: stepped.append(
            [p.grad.clone() for p in trainer.model.parameters()]
        )
    )
    trainer.fit()
    assert len(stepped) == 4 and trainer.scheduler.last_epoch == 4  # 2 epochs x 4 batches / 2
    for got, g0, g1 in zip(stepped[0], *grads, strict=True):
        torch.testing.assert_close(got, (g0 + g1) / 2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("model", ["yolo_tiny", "ssdlite320"])
def test_multi_scale_varies_the_training_input_in_strides_of_32(shapes, tmp_path, model):
    # SSD's coarsest strides (up to 256) must not collapse the sizes to one.
    trainer = _trainer(
        shapes, tmp_path, "img_size=96", "multi_scale=0.5", "eval_every=5", f"model={model}"
    )
    sizes = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: sizes.append(args[0].shape[-1]) if m.training else None
    )
    trainer.fit()
    assert len(sizes) == 8 and len(set(sizes)) > 1
    assert all(s % 32 == 0 and 32 <= s <= 128 for s in sizes)


def test_validation_loss_is_the_criterion_on_the_ema_outputs(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=1")
    trainer.fit()
    metrics = trainer.validate()
    ema, size, sums, n = trainer.ema.module, 64, {"box": 0.0, "obj": 0.0, "cls": 0.0}, 0
    with torch.inference_mode():
        for batch in trainer.val_loader:
            raw = ema(images_to_float(batch.images))
            parts = trainer.criterion(raw, batch.targets, ema.priors(size, size), ema.feature_sizes(size, size))  # fmt: skip
            sums, n = {k: sums[k] + v for k, v in zip(sums, parts.tolist(), strict=True)}, n + 1
    for k, v in sums.items():  # the detector runs the EMA with BN folded: float rounding
        assert metrics[f"val_{k}"] == pytest.approx(v / n, rel=1e-4)
    assert 0 <= metrics["mAP50"] <= 1
    row = load_checkpoint(trainer.run_dir / "last.pt")["history"][-1]
    assert all(math.isfinite(row[f"val_{k}"]) for k in sums)


def test_early_stopping_after_patience_and_resume_says_how_to_go_on(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=6", "patience=2")
    scores = iter([0.3, 0.5, 0.4, 0.5, 0.9, 0.9])
    trainer.validate = lambda: {"mAP50-95": next(scores), "mAP50": 0.6}
    trainer.fit()
    assert trainer.state.epoch == 4 and trainer.state.stop_reason == "early_stop"
    assert trainer.state.best_epoch == 2
    assert load_checkpoint(trainer.run_dir / "best.pt")["epoch"] == 2
    with pytest.raises(ResumeError, match=r"stopped early at epoch 4.*patience=0"):
        resume(trainer.run_dir / "last.pt")
    resume(trainer.run_dir / "last.pt", ["patience=0"])
    assert load_checkpoint(trainer.run_dir / "last.pt")["epoch"] == 6


def test_early_stopping_counts_only_evaluated_epochs(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=6", "patience=2", "eval_every=3")
    scores = iter([0.5, 0.4])  # epochs 3 and 6; epochs 4 and 5 say nothing about progress
    trainer.validate = lambda: {"mAP50-95": next(scores), "mAP50": 0.6}
    trainer.fit()
    assert trainer.state.epoch == 6 and trainer.state.best_epoch == 3


def test_the_start_of_training_names_the_recipe_values_in_force(shapes, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="detkit.engine"):
        # batch=4 comes before model=yolo_n and still wins over the recipe's 16
        trainer = _trainer(shapes, tmp_path, "model=yolo_n", "quiet=false", "max_steps=1")
        trainer.fit()
    assert (trainer.opts.batch, trainer.opts.epochs) == (4, 2)
    assert (
        "recipe 'yolo' (configs/recipes/yolo.yaml): mosaic=1.0 close_mosaic=5; set by your "
        "config or command line instead: batch=4 (recipe 16)"
    ) in caplog.text


def test_results_png_summary_table_and_quiet(shapes, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="detkit.engine"):
        trainer = _trainer(shapes, tmp_path, "quiet=false", "plots=true", "epochs=1")
        trainer.fit()
    assert (trainer.run_dir / "results.png").read_bytes()[:4] == b"\x89PNG"
    text = caplog.text
    assert "training on cpu" in text and "epoch 1/1: P " in text and "  mAP50-95 " in text
    assert "train loss" in text and "best" in text and "last" in text  # the summary table
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detkit.engine"):
        _trainer(shapes, tmp_path, "epochs=1").fit()
    assert not caplog.text


def test_tensorboard_is_optional_and_lazy(shapes, tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            written.append((key, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed", 0))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _trainer(shapes, tmp_path, "tensorboard=true", "epochs=1").fit()
    assert ("mAP50", 1) in written and ("box", 1) in written and written[-1][0] == "closed"

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        _trainer(shapes, tmp_path, "tensorboard=true")


def test_cli_device_flag_and_resume_overrides(shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _overrides(shapes, tmp_path / "runs", "epochs=1", "name=cli")
    args.remove("device=cpu")
    assert main(["train", "--device", "cpu", *args]) == 0
    run = tmp_path / "runs/cli"
    assert load_checkpoint(run / "last.pt")["config"]["train"]["device"] == "cpu"
    assert "run folder:" in capsys.readouterr().out
    assert main(["train", "--resume", str(run / "last.pt"), "epochs=2", "--device", "cpu"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    if not torch.cuda.is_available():
        assert main(["train", "--device", "cuda:1", *args]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_auto_anchors_are_fitted_to_the_train_boxes_and_saved_concrete(shapes, tmp_path):
    from detkit.config.build import fit_auto_anchors
    from detkit.inference.predict import Detector
    from detkit.models.anchors import fit_anchors

    trainer = _trainer(shapes, tmp_path, "epochs=1", "auto_anchors=2", "assigner=neighbors")
    m = trainer.config["model"]
    expected, _ = fit_anchors(trainer.train_set, 64, levels=3, per_level=2)
    assert m["auto_anchors"] == 0 and m["anchors"] == expected
    assert [len(level) for level in expected] == [2, 2, 2]
    sizes = [w * h for level in expected for w, h in level]
    assert sizes == sorted(sizes)  # finest stride, smallest anchors
    assert trainer.model.num_anchors == 2
    trainer.fit()
    ckpt = load_checkpoint(trainer.run_dir / "last.pt")
    saved, deploy = ckpt["config"]["model"], ckpt["deploy"]
    assert saved["anchors"] == expected and saved["auto_anchors"] == 0
    assert deploy["model"] == saved | {"backbone_weights": ""} and deploy["img_size"] == 64
    assert deploy["class_names"] == trainer.train_set.class_names
    detector = Detector.from_checkpoint(trainer.run_dir / "last.pt")
    assert detector.model.num_anchors == 2  # rebuilt from the saved anchors, no data needed
    with pytest.raises(ConfigError, match=r"model\.auto_anchors does nothing here: a grid-model"):
        load_config(overrides=["model=ssdlite320", "auto_anchors=3"])
    ssd = load_config(overrides=["model=ssdlite320"])
    ssd.model.auto_anchors = 3  # a Config built in Python is checked when the anchors are fit
    with pytest.raises(ValueError, match="auto_anchors is for grid models"):
        fit_auto_anchors(ssd, trainer.train_set)


def test_save_period_keeps_every_epochs_weights_and_the_csv_times_them(shapes, tmp_path):
    import csv

    trainer = _trainer(shapes, tmp_path, "save_period=1", "eval_every=2")
    run = trainer.fit()
    assert sorted(p.name for p in run.glob("epoch*.pt")) == ["epoch1.pt", "epoch2.pt"]
    assert load_checkpoint(run / "epoch1.pt")["epoch"] == 1
    with open(run / "metrics.csv", encoding="utf-8") as f:
        times = [float(r["time"]) for r in csv.DictReader(f)]
    assert len(times) == 2 and 0 < times[0] < times[1]
    plain = _trainer(shapes, tmp_path, "name=plain").fit()
    assert not list(plain.glob("epoch*.pt"))


def test_a_killed_loader_worker_keeps_the_epoch_and_says_to_try_workers_0(
    shapes, tmp_path, monkeypatch, capsys
):
    """A worker killed mid-epoch (as the kernel's OOM killer does): one line naming workers=0,
    exit status 1, and last.pt holding the updates done so far."""
    import os
    import signal

    from detkit.data import DetectionDataset
    from detkit.engine.runlog import EpochBar

    parent, get, show = os.getpid(), DetectionDataset.__getitems__, EpochBar.show
    flag = tmp_path / "one-update-done"

    def dies_after_an_update(self, keys):  # in the worker, once the trainer has updated
        if os.getpid() != parent and flag.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return get(self, keys)

    def show_then_flag(self, *args):  # after an update, outside it
        show(self, *args)
        flag.touch()

    monkeypatch.setattr(DetectionDataset, "__getitems__", dies_after_an_update)
    monkeypatch.setattr(EpochBar, "show", show_then_flag)
    args = _overrides(shapes, tmp_path, "workers=1", "name=killed", "epochs=1", "hflip=0")
    args = [a for a in args if a != "workers=0"]
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "data-loader worker died" in err and "workers=0" in err and "Traceback" not in err
    ckpt = load_checkpoint(tmp_path / "killed/last.pt")
    assert 1 <= ckpt["step"] <= 3 and ckpt["batch_in_epoch"] == ckpt["step"]  # 4 per epoch


# -- issue 22: Ultralytics' habits do what they say ------------------------------------------
def test_val_false_validates_only_after_the_last_epoch(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "epochs=3", "val=False")
    trainer.fit()
    scores = [row["mAP50-95"] for row in trainer.state.history]
    assert [math.isnan(s) for s in scores] == [True, True, False]
    assert load_checkpoint(trainer.run_dir / "best.pt")["epoch"] == 3


def test_fraction_trains_on_the_first_images(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "fraction=0.5", "epochs=1")
    assert (len(trainer.train_set), len(trainer.val_set)) == (8, 4)
    full = _trainer(shapes, tmp_path, "epochs=1", "name=full").train_set
    assert trainer.train_set.image_ids == full.image_ids[:8]
    report = trainer.train_set.report  # the split as checked, saying what is used
    assert report.name.endswith("(fraction: the first 8 of these 16 images are used)")
    assert report.kept == 16 and trainer.train_set.image_path(7) == full.image_path(7)


def test_exist_ok_reuses_the_named_folder(shapes, tmp_path):
    first = _trainer(shapes, tmp_path, "name=a", "epochs=1").run_dir
    assert _trainer(shapes, tmp_path, "name=a").run_dir == tmp_path / "a2"  # never overwritten
    assert _trainer(shapes, tmp_path, "name=a", "exist_ok=true").run_dir == first


def test_batch_minus_one_is_a_fixed_batch_on_a_cpu_saved_concrete(shapes, tmp_path):
    trainer = _trainer(shapes, tmp_path, "batch=-1", "epochs=1")
    assert trainer.opts.batch == 16 and trainer.config["train"]["batch"] == 16
    assert len(trainer.train_loader) == 1  # 16 images, one batch of 16


def test_optimizer_names_in_any_case(shapes, tmp_path):
    from detkit.config.build import build_optimizer

    model = torch.nn.Conv2d(3, 4, 3)
    for name, kind in (("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam),
                       ("AdamW", torch.optim.AdamW), ("auto", torch.optim.AdamW)):  # fmt: skip
        cfg = load_config(overrides=[f"optimizer={name}"]).train
        assert type(build_optimizer(cfg, model)) is kind
