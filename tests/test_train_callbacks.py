"""Hooks into training and the loggers on them (#22 item 7): callbacks see the start, each
epoch's metrics.csv row and the end; TensorBoard missing is one line before any work; MLflow
logs parameters, per-epoch metrics and artifacts into a local store, offline."""

from __future__ import annotations

import csv
import json
import logging
import sys

import pytest

import detkit
from detkit.cli import main
from detkit.config import load_config
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(root, project, *extra: str) -> list[str]:
    return [
        f"root={root}", "num_train=8", "num_val=4", "epochs=2", "batch=4", "img_size=64",
        "workers=0", "device=cpu", f"project={project}", "plots=false", "quiet=true", *extra,
    ]  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_train_start(self, run):
        self.events.append(("start", run))

    def on_epoch_end(self, metrics):
        self.events.append(("epoch", metrics))

    def on_train_end(self, run):
        self.events.append(("end", run))


def test_callbacks_see_the_start_each_epoch_and_the_end(tiny_shapes, tmp_path):
    seen, epochs_only = Recorder(), []
    cfg = load_config(overrides=_overrides(tiny_shapes, tmp_path))
    run = detkit.train(cfg, callbacks=[seen, {"on_epoch_end": epochs_only.append}])
    kinds = [k for k, _ in seen.events]
    assert kinds == ["start", "epoch", "epoch", "end"]
    start, end = seen.events[0][1], seen.events[-1][1]
    assert start.run_dir == run and start.epoch == 0 and start.epochs == 2
    assert start.class_names == ["circle", "square", "triangle", "star"]
    assert start.config["train"]["epochs"] == 2
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    for (_, metrics), row in zip(seen.events[1:3], rows, strict=True):  # metrics.csv's rows
        assert metrics["epoch"] == int(row["epoch"])
        for key in ("box", "precision", "recall", "mAP50", "mAP50-95", "lr"):
            assert f"{metrics[key]:.6g}" == row[key], key
    assert epochs_only == [m for k, m in seen.events if k == "epoch"]
    assert end.stop_reason == "" and end.epoch == 2 and end.best_epoch in (1, 2)
    assert {"best.pt", "last.pt", "metrics.csv", "best_metrics.json"} <= set(end.files)
    assert end.files["best.pt"] == run / "best.pt"


def test_a_callback_error_stops_the_run_with_last_pt_kept(tiny_shapes, tmp_path):
    seen = Recorder()

    def fail_at_epoch_1(metrics):
        raise RuntimeError("my logger failed")

    cfg = load_config(overrides=_overrides(tiny_shapes, tmp_path, "name=f"))
    with pytest.raises(RuntimeError, match="my logger failed"):
        detkit.train(cfg, callbacks=[seen, {"on_epoch_end": fail_at_epoch_1}])
    assert [k for k, _ in seen.events] == ["start", "epoch", "end"]
    assert seen.events[-1][1].stop_reason == "error"
    assert load_checkpoint(tmp_path / "f/last.pt")["epoch"] == 1  # resumable from epoch 1
    with pytest.raises(ValueError, match=r"unknown callback events \['on_train_epoch_end'\]"):
        detkit.train(cfg, callbacks=[{"on_train_epoch_end": print}])
    with pytest.raises(ValueError, match="has none of the methods"):
        detkit.train(cfg, callbacks=[object()])


def test_tensorboard_missing_is_one_line_before_any_work(
    tiny_shapes, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    args = _overrides(tiny_shapes, tmp_path / "runs", "tensorboard=true", "quiet=false")
    assert main(["train", *args]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "'tensorboard' package" in err and "pip install" in err
    assert "data:" not in out + err and not (tmp_path / "runs").exists()  # no work, no folder


@pytest.mark.slow  # importing mlflow and creating its store take several seconds
def test_mlflow_logs_the_run_offline_and_a_resume_goes_on_in_it(
    tiny_shapes, tmp_path, monkeypatch, caplog
):
    from mlflow import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "runs/train"
    with caplog.at_level(logging.INFO, logger="detkit"):
        run = detkit.train(load_config(overrides=_overrides(tiny_shapes, project, "mlflow=true")))
    store = tmp_path / "runs/mlflow"
    assert f"sqlite:///{store / 'mlflow.db'}" in caplog.text  # where it went, said once
    record = json.loads((run / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    logged = client.get_run(record["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "exp"
    assert (
        logged.data.params["train.epochs"] == "2" and logged.data.params["train.img_size"] == "64"
    )
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    history = client.get_metric_history(record["run_id"], "mAP50-95")
    assert [m.step for m in history] == [1, 2]
    assert [f"{m.value:.6g}" for m in history] == [r["mAP50-95"] for r in rows]
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"best.pt", "last.pt", "metrics.csv", "best_metrics.json", "config.yaml"} <= artifacts
    assert (store / "artifacts").is_dir()
    # extending the finished run logs into the same MLflow run
    detkit.resume(run / "last.pt", ["epochs=3"])
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == record["run_id"]
    steps = [m.step for m in client.get_metric_history(record["run_id"], "mAP50-95")]
    assert steps == [1, 2, 3] and client.get_run(record["run_id"]).info.status == "FINISHED"
