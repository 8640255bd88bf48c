"""Hooks into a training run (rank 0), and the TensorBoard and MLflow loggers built on them:
``on_train_start(run)``, ``on_epoch_end(metrics)`` (the ``metrics.csv`` row, NaN where not
validated, after ``last.pt``), ``on_train_end(run)``. An exception stops the run (in
``on_train_end`` of a run already failing: logged, the first error wins)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkit.core.io import write_json
from detkit.core.versions import require
from detkit.engine.resume import flatten

log = logging.getLogger(__name__)

EVENTS = ("on_train_start", "on_epoch_end", "on_train_end")


@dataclass
class RunInfo:
    """What a callback is told: ``epoch`` counts finished epochs, ``best_map`` is -1 before any
    validation; at the end ``files`` (the run folder's, by name) and ``stop_reason``: ``""``,
    ``"early_stop"``, ``"max_steps"``, ``"interrupted"`` or ``"error"``."""

    run_dir: Path
    config: dict[str, Any]
    class_names: list[str]
    epoch: int
    epochs: int
    best_epoch: int = 0
    best_map: float = -1.0
    stop_reason: str = ""
    files: dict[str, Path] = field(default_factory=dict)


class Callbacks:
    """The run's callbacks (objects with some of :data:`EVENTS`, or dicts event -> function).

    Raises:
        ValueError: a dict names an unknown event, or an object has none of :data:`EVENTS`.
    """

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.hooks: dict[str, list[Callable[..., Any]]] = {e: [] for e in EVENTS}
        for cb in callbacks:
            if isinstance(cb, Mapping):
                if unknown := sorted(set(cb) - set(EVENTS)):
                    raise ValueError(
                        f"unknown callback events {unknown}; the events: {', '.join(EVENTS)}"
                    )
                found = dict(cb)
            else:
                found = {e: getattr(cb, e) for e in EVENTS if callable(getattr(cb, e, None))}
                if not found:
                    raise ValueError(
                        f"callback {cb!r} has none of the methods {', '.join(EVENTS)}: it would never be called"
                    )
            for event, fn in found.items():
                self.hooks[event].append(fn)

    def __bool__(self) -> bool:
        return any(self.hooks.values())

    def fire(self, event: str, arg: object) -> None:
        for fn in self.hooks[event]:
            fn(arg)


class TensorBoardLogger:
    """Every ``metrics.csv`` number of each epoch as a TensorBoard scalar, in the run folder.

    Raises:
        MissingPackage: ``tensorboard`` is not installed (at construction).
    """

    def __init__(self) -> None:
        self._writer_class = require(
            "torch.utils.tensorboard", "tensorboard=true",
            "pip install tensorboard, or train with tensorboard=false", package="tensorboard",
        ).SummaryWriter  # fmt: skip
        self.writer: Any = None

    def on_train_start(self, run: RunInfo) -> None:
        self.writer = self._writer_class(log_dir=str(run.run_dir))

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        for key, value in numeric(metrics).items():
            self.writer.add_scalar(key, value, metrics["epoch"])
        self.writer.flush()

    def on_train_end(self, run: RunInfo) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row, less its ``epoch`` and ``step`` counters.

    Example:
        >>> numeric({"epoch": 2, "step": 8, "box": 1.5, "mAP50": float("nan"), "name": "x"})
        {'box': 1.5}
    """
    return {
        k: float(v)
        for k, v in metrics.items()
        if k not in ("epoch", "step")
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


class MLflowLogger:
    """The run in MLflow (its own ``MlflowClient``): config as parameters, epoch metrics (step =
    epoch), the run's files as artifacts. Tracking URI: ``tracking_uri``, ``$MLFLOW_TRACKING_URI``
    or SQLite at ``<project>/../mlflow/``; a resume goes on in the run named in ``mlflow.json``.

    Raises:
        MissingPackage: ``mlflow`` is not installed (at construction).
    """

    def __init__(self, tracking_uri: str = "", experiment: str = "") -> None:
        self.mlflow = require(
            "mlflow",
            "mlflow=true",
            "pip install mlflow-skinny (or mlflow), or train with mlflow=false",
        )
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "") or "detkit"
        self.client: Any = None
        self.run_id = ""

    def on_train_start(self, run: RunInfo) -> None:
        store = (run.run_dir.parent.parent / "mlflow").resolve()  # runs/train/exp -> runs/mlflow
        uri = self.tracking_uri
        if not uri:
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
        self.client = self.mlflow.MlflowClient(tracking_uri=uri)
        record = run.run_dir / "mlflow.json"
        if record.is_file():  # a resumed run goes on in its MLflow run
            self.run_id = json.loads(record.read_text(encoding="utf-8"))["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        artifacts = None if self.tracking_uri else (store / "artifacts").as_uri()
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(self.experiment, artifact_location=artifacts)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run.run_dir.name).info.run_id
        params = [
            self.mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(run.config).items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        write_json(record, {"tracking_uri": uri, "run_id": self.run_id}, indent=1)
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, self.experiment, uri)

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        Metric = self.mlflow.entities.Metric
        stamp = self.mlflow.utils.time.get_current_time_millis()
        # MLflow metric names allow letters, digits, ``_ - . / :`` and spaces
        rows = [
            Metric("".join(c if c.isalnum() or c in "_-./: " else "_" for c in k), v, stamp,
                   int(metrics["epoch"]))
            for k, v in numeric(metrics).items()
        ]  # fmt: skip
        self.client.log_batch(self.run_id, metrics=rows)

    def on_train_end(self, run: RunInfo) -> None:
        if self.client is None:
            return
        if run.stop_reason in ("", "early_stop"):
            for path in run.files.values():
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
        status = {"interrupted": "KILLED", "error": "FAILED"}.get(run.stop_reason, "FINISHED")
        self.client.set_terminated(self.run_id, status=status)


LOGGERS: dict[str, Callable[[], Any]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
"""Config key (``train.<key>: true``) -> the built-in logger it adds."""


def check_loggers(enabled: Mapping[str, bool]) -> list[Any]:
    """The built-in loggers ``{"tensorboard": bool, "mlflow": bool}`` turns on, built now: a
    missing package raises :class:`detkit.core.versions.MissingPackage` before any work."""
    return [make() for key, make in LOGGERS.items() if enabled.get(key)]
