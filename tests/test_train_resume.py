"""Resume: a stopped run, resumed, ends bit-identical to one never stopped (CPU, fixed seed).

A run is stopped after epoch 1 and in the middle of epoch 2 (by ``max_steps``, which keeps the
schedule of ``epochs``, and by a real SIGTERM), with 0 and with 2 loader workers, then resumed
through ``resume``; weights, EMA, optimiser state, scheduler and the metrics history must equal
the uninterrupted run's exactly. Also: what a checkpoint holds, ``save_every``, and the clear
refusals (finished run, changed model, image size or class list).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import torch

from detkit.api import build_trainer, resume, resume_or_start, train
from detkit.config import load_config
from detkit.engine.resume import ResumeError
from detkit.engine.safety import TrainingInterrupted
from detkit.engine.trainer import Trainer
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHES_PER_EPOCH = 4  # 16 train images, batch 4


@pytest.fixture(scope="module", autouse=True)
def _full_checkpoints():
    """These tests compare finished runs' whole checkpoints, optimiser state included; the slim
    checkpoints a finished run keeps are tested in test_checkpoint_slim.py."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "_slim_checkpoints", lambda self: None)
        yield


def _cfg(root, project, *extra: str):
    return load_config(
        overrides=[
            f"root={root}", "num_train=16", "num_val=4", "epochs=3", "batch=4", "img_size=64",
            "workers=0", "quiet=true", "device=cpu", "model.widths=[8,16,16,16,16]",
            "model.neck_width=16", f"project={project}", "plots=false", "seed=3",
            "multi_scale=0.5", *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(shapes, tmp_path_factory):
    """The uninterrupted run's final checkpoint."""
    run = train(_cfg(shapes, tmp_path_factory.mktemp("ref"), "name=ref"))
    return load_checkpoint(run / "last.pt")


def _assert_same_run(a: dict, b: dict, skip: tuple[str, ...] = ("time",)) -> None:
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert a["ema_updates"] == b["ema_updates"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer state {i}.{k} differs"
    assert a["scheduler"] == b["scheduler"]
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    # NaN-safe exact comparison; wall time ("time") is the one thing a resume cannot repeat
    untimed = [
        [{k: v for k, v in row.items() if k not in skip} for row in r["history"]] for r in (a, b)
    ]
    assert json.dumps(untimed[0]) == json.dumps(untimed[1])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_at", [BATCHES_PER_EPOCH, BATCHES_PER_EPOCH + 2])
def test_stopped_and_resumed_run_is_bit_identical(shapes, reference, tmp_path, stop_at, workers):
    run = train(_cfg(shapes, tmp_path, f"max_steps={stop_at}", f"workers={workers}"))
    stopped = load_checkpoint(run / "last.pt")
    assert stopped["step"] == stop_at
    assert stopped["epoch"] == stop_at // BATCHES_PER_EPOCH
    assert stopped["batch_in_epoch"] == stop_at % BATCHES_PER_EPOCH
    assert resume(run / "last.pt", ["max_steps=0"]) == run
    _assert_same_run(load_checkpoint(run / "last.pt"), reference)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_resumable_checkpoint(shapes, reference, tmp_path, signum):
    trainer = build_trainer(_cfg(shapes, tmp_path, "name=sig"))
    handler_before = signal.getsignal(signum)

    def interrupted_at_step_6(module, args):
        if (
            module.training and trainer.state.step == 5
        ):  # during the 6th batch: honoured after its update
            os.kill(os.getpid(), signum)

    trainer.model.register_forward_pre_hook(interrupted_at_step_6)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.signum == signum
    assert signal.getsignal(signum) is handler_before  # handlers put back
    last = trainer.run_dir / "last.pt"
    assert info.value.checkpoint == str(last)
    saved = load_checkpoint(last)
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 2, 6)
    resume(last)
    _assert_same_run(load_checkpoint(last), reference)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
def test_sigterm_during_validation_loses_no_training(shapes, reference, tmp_path):
    """last.pt is written before validation (torchrun's SIGKILL follows SIGTERM by 30 s, and a
    COCO-sized validation takes longer), validation stops at its next batch, and the resume
    runs it first: the run ends as the one never stopped."""
    trainer = build_trainer(_cfg(shapes, tmp_path, "name=val", "val_batch=1"))
    last = trainer.run_dir / "last.pt"
    make_detector, seen = trainer.detector, []

    def detector(*args, **kwargs):
        det = make_detector(*args, **kwargs)

        def signalled(module, inputs):
            if trainer.state.epoch == 2:  # epoch 2's validation: 4 batches of 1 image
                seen.append(load_checkpoint(last)["step"] if last.exists() else None)
                os.kill(os.getpid(), signal.SIGTERM)

        det.model.register_forward_pre_hook(signalled)
        return det

    trainer.detector = detector
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert seen == [2 * BATCHES_PER_EPOCH]  # on disk when validation began; one batch ran
    saved = load_checkpoint(last)
    assert (saved["epoch"], saved["step"], saved["batch_in_epoch"]) == (2, 8, 0)
    assert saved["val_pending"] is not None and len(saved["history"]) == 1
    resume(last)  # validates epoch 2, then trains epoch 3
    done = load_checkpoint(last)
    # validation in batches of 1 gives other loss means (per batch) than the reference's 4
    val = ("time", "val_box", "val_obj", "val_cls", "mAP50-95", "mAP50")
    _assert_same_run(done, reference, skip=val)
    assert all(math.isfinite(row["mAP50"]) for row in done["history"])


def test_checkpoint_holds_everything_in_full_precision(shapes, reference):
    ckpt = reference
    for key in (
        "model", "ema", "ema_updates", "optimizer", "scheduler", "scaler", "epoch", "step",
        "batch_in_epoch", "rng", "data", "config", "class_names", "cat_ids", "version",
        "history", "best_map", "best_epoch", "world",
    ):  # fmt: skip
        assert key in ckpt, key
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["data"] == {"seed": 3, "epoch": 3, "start_batch": 0, "batches": BATCHES_PER_EPOCH}
    assert ckpt["world"] == [[0, 1]]  # [step, processes] since the start
    assert ckpt["ema_updates"] == 3 * BATCHES_PER_EPOCH
    assert ckpt["config"]["train"]["img_size"] == 64
    assert ckpt["class_names"] and len(ckpt["cat_ids"]) == len(ckpt["class_names"])
    tensors = [*ckpt["model"].values(), *ckpt["ema"].values()]
    tensors += [t for s in ckpt["optimizer"]["state"].values() for t in s.values()]
    assert all(t.dtype in (torch.float32, torch.int64) for t in tensors)


def test_save_every_writes_mid_epoch(shapes, tmp_path, monkeypatch):
    import detkit.engine.trainer as trainer_module

    saved = []
    real_save = trainer_module.save_checkpoint

    def recording_save(state, path):
        saved.append((path.name, state["step"], state["batch_in_epoch"]))
        return real_save(state, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", recording_save)
    train(_cfg(shapes, tmp_path, "epochs=2", "save_every=3", "eval_every=5"))
    last = [(step, b) for name, step, b in saved if name == "last.pt"]
    # step 3 (mid epoch 1), epoch ends at 4 and 8 (8 twice: before and after the validation),
    # step 6 (mid epoch 2); 9 would be past the end
    assert last == [(3, 3), (4, 0), (6, 2), (8, 0), (8, 0)]


def test_resume_refuses_finished_changed_model_size_and_classes(shapes, reference, tmp_path):
    run = train(_cfg(shapes, tmp_path, "epochs=1", "name=r"))
    last = run / "last.pt"
    with pytest.raises(ResumeError, match=r"finished at epoch 1 of 1; pass epochs=N"):
        resume(last)
    with pytest.raises(ResumeError) as info:
        resume(last, ["epochs=2", "model.neck_width=32", "img_size=96"])
    message = str(info.value)
    assert "model.neck_width: 16 in the checkpoint, 32 now" in message
    assert "train.img_size: 64 in the checkpoint, 96 now" in message

    other = tmp_path / "renamed"
    shutil.copytree(shapes, other)
    ann = other / "annotations/instances_train.json"
    coco = json.loads(ann.read_text())
    coco["categories"][0]["name"] = "blob"
    ann.write_text(json.dumps(coco))
    with pytest.raises(ResumeError) as info:
        resume(last, ["epochs=2", f"root={other}"])
    assert "classes differ" in str(info.value) and "new in the dataset: blob" in str(info.value)
    assert not list(run.glob("config.until*"))  # refused resumes change nothing
    assert resume(last, ["epochs=2"]) == run  # extending it works
    assert load_checkpoint(last)["epoch"] == 2
    # config.yaml says how the run goes on; what it said until the resume is kept beside it
    assert load_config(run / "config.yaml").train.epochs == 2
    assert load_config(run / "config.until_epoch1_step4.yaml").train.epochs == 1


def test_resume_auto_starts_then_continues_in_the_same_folder(shapes, reference, tmp_path):
    """``--resume auto``: the first launch starts ``project/name``, a relaunch of the same
    command continues its last.pt there and ends as the uninterrupted run."""
    first = resume_or_start(_cfg(shapes, tmp_path, "name=exp", "max_steps=6"), ["max_steps=6"])
    assert first == tmp_path / "exp"
    assert load_checkpoint(first / "last.pt")["step"] == 6
    again = resume_or_start(_cfg(shapes, tmp_path, "name=exp"), ["max_steps=0"])
    assert again == first and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    _assert_same_run(load_checkpoint(first / "last.pt"), reference)
    with pytest.raises(ResumeError, match="needs a fixed name"):
        resume_or_start(_cfg(shapes, tmp_path), [])


def test_a_max_steps_stop_says_how_to_continue(shapes, tmp_path, monkeypatch, caplog, capsys):
    from detkit.cli import main

    monkeypatch.chdir(tmp_path)
    overrides = [
        f"root={shapes}", "num_train=16", "num_val=4", "epochs=3", "batch=4", "img_size=64",
        "workers=0", "device=cpu", "model.widths=[8,16,16,16,16]", "model.neck_width=16",
        "plots=false", "max_steps=2", "name=stop",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="detkit"):
        assert main(["train", *overrides]) == 0
    last = Path("runs/train/stop/last.pt")  # relative to the working folder, as the user typed
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped at")]
    assert said == [f"stopped at max_steps: continue with --resume {last} max_steps=0"]
    assert load_checkpoint(last)["step"] == 2  # the path it names exists and holds the stop
    out = capsys.readouterr().out  # stopped before any evaluation: no best.pt to point at
    assert f"no evaluation yet, so no best.pt; continue with --resume {last}" in out
    assert not (last.parent / "best.pt").exists()


def test_resume_with_data_changes_the_dataset_only(shapes, tmp_path, caplog):
    """Issue 22: ``--resume last.pt data=X`` reset the whole data section to its defaults (the
    run's mosaic 0.5 became 0.0, with only a warning); now X's dataset replaces the run's and
    every other setting goes on as it was."""
    run = train(_cfg(shapes, tmp_path, "epochs=1", "name=d", "mosaic=0.5", "hsv_v=5"))
    json_file = shapes / "annotations" / "instances_train.json"  # the same images, as a file
    with caplog.at_level(logging.WARNING, logger="detkit"):
        resume(run / "last.pt", ["epochs=2", f"data={json_file}"])
    data = load_config(run / "config.yaml").data
    assert (data.mosaic, data.hsv_v, data.format) == (0.5, 5.0, "coco")
    assert (data.root, data.val_ann) == (str(shapes), "annotations/instances_val.json")
    changed = {
        r.getMessage().split(" changed")[0] for r in caplog.records if " changed" in r.getMessage()
    }
    assert changed == {"resuming with data.format", "resuming with data.train_images",
                       "resuming with data.val_images"}  # fmt: skip
    with pytest.raises(
        ResumeError,
        match=r"train\.name: 'd' in the checkpoint, 'other' now \(a resumed run continues in its own",
    ):
        resume(run / "last.pt", ["epochs=3", "name=other"])
