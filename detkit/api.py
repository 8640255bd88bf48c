"""The library verbs, each composing a run with :mod:`detkit.config.build` from a config (a
:class:`~detkit.config.Config`, a YAML path or None, ``key=value`` strings, keywords alike)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detkit.config import (
    AUTO_BATCH,
    Config,
    ConfigError,
    check_applies,
    check_overrides,
    config_from_dict,
    idle_keys,
    load_config,
    refuse_idle,
    resolve_file,
    save_config,
)

if TYPE_CHECKING:
    from detkit.core.protocols import DetectionSplit
    from detkit.engine.trainer import Trainer
    from detkit.models.summary import ModelSummary

log = logging.getLogger(__name__)

AUTO = "auto"  # ``resume="auto"``: continue the named run if it has a last.pt, else start it

# data keys only training reads (augmentation, and the share of the training split)
TRAINING_DATA = ("mosaic", "close_mosaic", "affine", "aug_scale", "translate", "degrees", "hsv_h",
                 "hsv_s", "hsv_v", "blur", "noise", "min_visibility", "min_box_area", "fraction")  # fmt: skip
_READS = {  # the train keys each verb reads
    "eval": ("train.img_size", "train.batch", "train.workers", "train.device", "train.plots"),
    "check_data": ("train.img_size", "train.hflip", "train.epochs", "train.seed"),
    "convert": (),
}


def as_overrides(overrides: list[str] | None, options: dict[str, Any]) -> list[str]:
    """``key=value`` strings from a list and keyword arguments (lists as YAML flow lists).

    Example:
        >>> as_overrides(["lr=0.01"], {"epochs": 5, "widths": [8, 16], "amp": False})
        ['lr=0.01', 'epochs=5', 'widths=[8, 16]', 'amp=false']
    """
    text = {k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()}
    return [*(overrides or []), *(f"{k}={v}" for k, v in text.items())]


def resolve(config: Config | str | Path | None, overrides: list[str] | None) -> Config:
    """A :class:`Config` from a config (object, YAML path or None) and overrides."""
    if isinstance(config, Config):
        return config_from_dict(config.to_dict(), overrides) if overrides else config
    return load_config(config, overrides)


def train_config(
    config: Config | str | Path | None, overrides: list[str] | None, options: dict[str, Any]
) -> tuple[Config, dict[str, Any] | None]:
    """The config of a new run, and the ``weights=`` checkpoint it starts from (read once): its
    model section unless the config names a model, which must then match its architecture and
    size (ValueError). CheckpointError: the weights file cannot be read."""
    from detkit.config import build
    from detkit.models.checkpoint import CheckpointError, load_checkpoint

    more = as_overrides(overrides, options)
    cfg = resolve(config, more)
    if not cfg.train.weights:
        return cfg, None
    try:
        ckpt = load_checkpoint(cfg.train.weights)
    except CheckpointError as e:
        if "not a detkit checkpoint" not in str(e):
            raise
        raise CheckpointError(
            f"weights=: {e}; it takes a detkit run's best.pt / last.pt (a backbone's state "
            "dict, e.g. torchvision's, goes in backbone_weights=)"
        ) from None
    theirs = dict(build.checkpoint_deploy(ckpt, cfg.train.weights).model)
    if not _names_a_model(config):  # None or an experiment file without a model
        cfg = load_config(config, more, model=theirs)
    build.check_architecture(theirs, cfg.model, cfg.train.weights)
    # resolving skipped the model keys (the model was not known yet): checked on it now
    check_applies(cfg, [k for k in check_overrides(more) if k.startswith("model.")])
    return cfg, ckpt


def _names_a_model(config: Config | str | Path | None) -> bool:
    """Whether a config chooses the model itself (the default experiment's does not)."""
    if config is None or isinstance(config, Config):
        return config is not None
    from detkit.core.yamlio import load_yaml

    path = resolve_file(str(config))
    raw = load_yaml(path.read_text(encoding="utf-8"), str(path))
    return isinstance(raw, dict) and "model" in raw


def verb_ignores(verb: str, key: str) -> str | None:
    """Why ``verb`` (``eval``, ``check_data``, ``convert``) does nothing with the dotted
    ``key`` (``data``/``model`` for a section swap), or None when it reads it."""
    section, _, name = key.partition(".")
    # check-data's --show-aug draws the augmentation
    if key == "data" or (section == "data" and (name not in TRAINING_DATA or verb == "check_data")):
        return None if verb != "convert" or name != "cache_images" else "convert caches nothing"
    if section == "data" or (section == "train" and key not in _READS[verb]):
        return f"a training setting, and {verb.replace('_', '-')} does not train"
    if key == "model" or section == "model":
        return {"eval": "the model is the checkpoint's"}.get(verb, f"{verb} reads the data only")
    if section == "eval" and verb != "eval":
        return f"an evaluation setting, and {verb.replace('_', '-')} does not evaluate"
    return None


def check_verb_keys(verb: str, keys: list[str]) -> None:
    """Refuse (ConfigError) the keys ``verb`` would ignore, each with why."""
    idle = [f"{k}: {why}" for k in dict.fromkeys(keys) if (why := verb_ignores(verb, k))]
    refuse_idle(idle, f"in {verb.replace('_', '-')}")


def build_trainer(
    cfg: Config, run_dir: Path | None = None, fresh: bool = True, start: dict | None = None,
    callbacks: Iterable[Any] = (),
) -> Trainer:  # fmt: skip
    """The :class:`detkit.engine.trainer.Trainer` of a config, every part built here; ``fresh``:
    a new run, loading ``weights`` (``start`` when read already), ``backbone_weights`` or
    ``pretrained`` (False: a resume). MissingPackage: a logger's package (before any work)."""
    import torch

    from detkit.config import build
    from detkit.core.io import next_run_dir, removed_if_left_empty, write_text
    from detkit.data.loader import usable_workers
    from detkit.engine import distributed as ddp
    from detkit.engine.autobatch import auto_batch
    from detkit.engine.callbacks import check_loggers
    from detkit.engine.device import amp_dtype
    from detkit.engine.feed import train_val_loaders
    from detkit.engine.optim import accumulation_steps, build_scheduler
    from detkit.engine.trainer import Trainer

    t = cfg.train
    loggers = check_loggers({"tensorboard": t.tensorboard, "mlflow": t.mlflow})
    ctx, device = ddp.init_distributed(t.device, t.dist_timeout)
    torch.manual_seed(t.seed)

    # rank 0 opens and checks the splits (a generated dataset is written once) and fits the
    # anchors; the other ranks receive the results instead of repeating the work
    def open_splits() -> tuple[Any, Any]:
        workers = usable_workers(t.workers)  # decode-check processes, as many as the loader's
        return tuple(build.build_dataset(cfg.data, s, workers) for s in ("train", "val"))

    train_set, val_set = ddp.on_main(open_splits, ctx)
    if ctx.is_main and same_images(train_set, val_set):
        held_out = {"coco": "data.val_ann=FILE", "voc": "data.voc_val=[...]"}.get(
            cfg.data.format, "the val entry of the data.yaml"
        )
        log.warning(
            "the train and val splits are the same %d images: val mAP then measures fit, not "
            "generalisation (give a held-out split: %s)", len(train_set), held_out,
        )  # fmt: skip
    cfg = ddp.on_main(lambda: build.fit_auto_anchors(cfg, train_set, log.info), ctx)
    model = build.build_model(cfg.model, len(train_set.class_names), fresh and not t.weights)
    report = build.initial_weights(model, t, train_set.class_names, fresh, start)
    model, amp = model.to(device), amp_dtype(device, t.amp, t.amp_dtype)
    if t.batch == AUTO_BATCH:  # chosen on rank 0 for one device; the batch is per step, all ranks
        per_rank = ddp.on_main(lambda: auto_batch(model, t.img_size, device, amp), ctx)
        cfg = replace(cfg, train=replace(t, batch=per_rank * ctx.world_size))
        t = cfg.train
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ddp.prepare_model(model, ctx, device, t.sync_bn)
    optimizer = build.build_optimizer(t, model)
    train_loader, val_loader = train_val_loaders(
        build.build_detection_dataset(cfg, train_set, train=True),
        build.build_detection_dataset(cfg, val_set, train=False),
        t.batch, t.workers, t.seed, ctx, pin_memory=device.type == "cuda", val_batch=t.val_batch,
    )  # fmt: skip
    accumulate = accumulation_steps(t.batch, t.nominal_batch)
    per_epoch = math.ceil(len(train_loader) / accumulate)
    total, warmup = t.epochs * per_epoch, round(t.warmup_epochs * per_epoch)
    criterion = build.build_loss(model, cfg.model)
    criterion.check_init = not (fresh and t.weights)  # a trained head is not a fresh one
    stride = getattr(model, "size_multiple", max([32, *model.strides]))  # of multi-scale sizes
    opts = build.train_options(cfg, accumulate, amp, stride)
    parts = dict(
        ctx=ctx, device=device, train_set=train_set, val_set=val_set,
        train_loader=train_loader, val_loader=val_loader, model=model,
        criterion=criterion, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total, min(warmup, total // 2), t.schedule,
                                  t.final_lr_ratio),
        deploy=build.deploy_record(cfg, train_set.class_names, train_set.cat_ids),
        config=cfg.to_dict(), opts=opts,
    )  # fmt: skip
    if ctx.is_main:
        run_dir = run_dir or next_run_dir(t.project, t.name, t.exist_ok)
        if report is not None:
            log.info("%s", report)
            write_text(run_dir / "initial_weights.txt", report + "\n")
    with removed_if_left_empty(run_dir):  # a Trainer that fails to start leaves no bare folder
        return Trainer(**parts, run_dir=run_dir, callbacks=[*loggers, *callbacks])


def same_images(a: DetectionSplit, b: DetectionSplit) -> bool:
    if len(a) != len(b):
        return False
    return {a.image_path(i) for i in range(len(a))} == {b.image_path(i) for i in range(len(b))}


def _record_config(trainer: Trainer) -> None:
    """Write the run's ``config.yaml`` (rank 0) once the run is sure to start."""
    if trainer.run_dir is not None:
        save_config(config_from_dict(trainer.config), trainer.run_dir / "config.yaml")


def train(
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    run_dir: Path | None = None,
    callbacks: Iterable[Any] = (),
    **options: object,
) -> Path | None:
    """Train a detector from ``config`` (None: ``configs/default.yaml``) and ``key=value``
    overrides (``**options`` as keywords); returns the run folder (None on DDP ranks but 0).
    ``resume``: continue a ``last.pt`` instead (:func:`resume`; no ``config``) or ``"auto"``
    (:func:`resume_or_start`); ``callbacks``: hooks on rank 0 (:mod:`detkit.engine.callbacks`).
    TrainingInterrupted: SIGINT/SIGTERM stopped the run after ``last.pt`` was written;
    NonFiniteError: the loss or gradients stayed non-finite (``max_nonfinite``)."""
    from detkit.core.logs import ensure_handler
    from detkit.engine import distributed as ddp

    if resume is not None:
        return _continue(resume, config, overrides, options, callbacks)
    cfg, start = train_config(config, overrides, options)
    ensure_handler(cfg.train.quiet)
    try:
        trainer = build_trainer(cfg, run_dir, start=start, callbacks=callbacks)
        _record_config(trainer)
        return trainer.fit()
    finally:
        ddp.cleanup()


def _continue(
    checkpoint: str | Path, config: Config | str | Path | None, overrides: list[str] | None,
    options: dict[str, object], callbacks: Iterable[Any],
) -> Path | None:  # fmt: skip
    """:func:`train` with ``resume=`` (its parameter hides :func:`resume` there)."""
    if checkpoint == AUTO:
        return resume_or_start(train_config(config, overrides, options)[0], overrides, callbacks)
    if config is not None:
        raise ConfigError("a config and resume= do not mix: a resumed run keeps its own config")
    return resume(checkpoint, as_overrides(overrides, options), callbacks=callbacks)


def resume(
    checkpoint: str | Path,
    overrides: list[str] | None = None,
    epochs: int | None = None,
    *,
    state: dict[str, Any] | None = None,
    callbacks: Iterable[Any] = (),
) -> Path | None:
    """Continue the run that wrote ``checkpoint`` (its ``last.pt``) in the same folder; returns
    it (None on DDP ranks but 0). ``overrides``: changes, e.g. ``["epochs=40"]`` to extend a
    finished run (``epochs``: shorthand); ``state``: the checkpoint when read already.
    ResumeError: :func:`detkit.engine.resume.check_resumable`, ``check_classes``;
    CheckpointError: the file is missing, truncated or not a detkit checkpoint."""
    from detkit.engine import distributed as ddp
    from detkit.engine.resume import (
        check_classes,
        check_resumable,
        check_same_start,
        config_changes,
    )
    from detkit.models.checkpoint import load_checkpoint

    overrides = list(overrides or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    check_overrides(overrides)  # names and types, before the checkpoint is read
    ckpt = state if state is not None else load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], overrides)
    saved = config_from_dict(ckpt["config"]).to_dict()  # with today's defaults filled in
    # a key that does nothing under the new config (data=X resets num_train of a shapes run
    # that now reads a json) is no change to warn about: compared at its saved value
    idle = idle_keys(cfg)
    new = {s: {k: saved[s].get(k, v) if f"{s}.{k}" in idle else v for k, v in d.items()}
           for s, d in cfg.to_dict().items()}  # fmt: skip
    check_resumable(ckpt, saved, new, checkpoint)
    try:
        trainer = build_trainer(cfg, Path(checkpoint).parent, fresh=False, callbacks=callbacks)
        check_classes(ckpt["class_names"], trainer.deploy.class_names, checkpoint)
        trainer.load(ckpt)  # may still refuse: nothing on disk has changed yet
        check_same_start(trainer.state.epoch, trainer.state.step, trainer.ctx, checkpoint)
        current = trainer.run_dir / "config.yaml" if trainer.run_dir is not None else None
        if current is not None and current.is_file() and config_changes(saved, cfg.to_dict()):
            # a changed resume: the old settings keep their file as config.until_epoch<E>_step<S>
            kept = current.with_name(f"config.until_epoch{ckpt['epoch']}_step{ckpt['step']}.yaml")
            if not kept.exists():
                current.replace(kept)
            log.info("config.yaml now holds the resumed run's settings; until here: %s", kept.name)
        _record_config(trainer)
        return trainer.fit()
    finally:
        ddp.cleanup()


def resume_or_start(
    cfg: Config, overrides: list[str] | None = None, callbacks: Iterable[Any] = ()
) -> Path | None:
    """``--resume auto``: continue ``<project>/<name>/last.pt`` (``overrides`` applied to its
    config) when it exists, else start the run there, so a relaunch goes on where it left off.
    ResumeError: ``name`` is empty, or the checkpoint cannot continue (:func:`resume`)."""
    from detkit.core.io import removed_if_left_empty
    from detkit.engine import distributed as ddp
    from detkit.engine.resume import ResumeError
    from detkit.models.checkpoint import load_checkpoint

    t = cfg.train
    if not t.name:
        raise ResumeError(
            "--resume auto needs a fixed name=... (e.g. name=exp): every launch must find the "
            "same run folder"
        )
    run_dir = Path(t.project) / t.name
    last = run_dir / "last.pt"
    # rank 0 alone decides and sends last.pt to every rank: a node whose run folder lacks the
    # file (node-local storage) must not start afresh beside ranks that continue
    ctx, _ = ddp.init_distributed(t.device, t.dist_timeout)
    try:
        ckpt = ddp.on_main(lambda: load_checkpoint(last) if last.exists() else None, ctx)
    except BaseException:
        ddp.cleanup()
        raise
    if ckpt is not None:
        log.info("--resume auto: continuing from %s", last)
        return resume(last, overrides, state=ckpt, callbacks=callbacks)
    log.info("--resume auto: no %s yet; starting the run there", last)
    made = ctx.is_main and not run_dir.exists()
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)  # a launch that died early may have made it
    with removed_if_left_empty(run_dir if made else None):
        return train(cfg, run_dir=run_dir, callbacks=callbacks)


@dataclass
class Evaluation:
    """What :func:`evaluate` measured (``result``: an EvalResult; ``meta``: its settings) and wrote
    (``out``, ``files``); where the F1-optimal ``conf`` went (``stored_in``) or why not."""

    result: Any
    meta: dict[str, Any]
    out: Path | None
    files: dict[str, Path]
    stored_conf: float | None = None
    store_error: str = ""
    stored_in: Path | None = None


def evaluate(
    weights: str | Path,
    overrides: list[str] | None = None,
    *,
    out: str | Path | None = None,
    plots: bool = True,
    store_conf: bool = True,
    progress: bool = True,
    **options: object,
) -> Evaluation:
    """COCO and VOC metrics, error breakdown, calibration and plots of a checkpoint on a split,
    ``overrides`` (``["split=val", "data=data.yaml"]``; ``**options`` as keywords) applied to its
    config; ``out``: the report folder (None: metrics only); ``store_conf``: record the F1-optimal
    threshold in ``best.thresholds.json`` beside ``best.pt`` for ``conf="best"``.
    CheckpointError: unreadable weights; ValueError: the split's classes differ from the
    checkpoint's; ConfigError: a key evaluation does not read, named."""
    from detkit.config.build import build_dataset, build_detection_dataset
    from detkit.data import build_loader, ground_truth
    from detkit.eval import evaluate_detector, write_report
    from detkit.eval.runner import JsonlSink, error_ious
    from detkit.inference.predict import Detector
    from detkit.models.checkpoint import load_checkpoint, write_thresholds

    more = as_overrides(overrides, options)
    named = check_overrides(more)
    check_verb_keys("eval", named)
    weights = Path(weights)
    ckpt = load_checkpoint(weights)
    cfg = config_from_dict(ckpt["config"], more)
    if cfg.train.batch == AUTO_BATCH:
        raise ConfigError("batch=-1 (automatic) is for training; give eval a batch=N")
    plots = plots and (cfg.train.plots or "train.plots" not in named)  # plots=false as asked
    e = cfg.eval
    dataset = build_dataset(cfg.data, e.split)
    if list(dataset.class_names) != list(ckpt["class_names"]):
        raise ValueError(
            f"the dataset's classes {dataset.class_names} differ from the checkpoint's "
            f"{ckpt['class_names']}"
        )
    det = Detector.from_checkpoint(
        weights, device=cfg.train.device, conf=e.conf, iou=e.iou, max_det=e.max_det,
        img_size=cfg.train.img_size, cat_ids=dataset.cat_ids,
    )  # fmt: skip
    # scored in memory; a converted split (VOC, YOLO, a repaired COCO file) is named, not written
    annotations = str(dataset.gt_file or f"{dataset.report.name}, built from the split")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    # each image's detections go to disk as they are made; predictions.json replaces the
    # stream once everything is scored
    sink = JsonlSink(Path(out) / "predictions.jsonl", dataset.cat_ids) if out is not None else None
    with build_loader(
        build_detection_dataset(cfg, dataset, train=False), cfg.train.batch, train=False,
        workers=cfg.train.workers, seed=0,
    ) as loader:  # fmt: skip
        try:
            result = evaluate_detector(
                det, loader, ground_truth(dataset), progress=progress, detailed=True,
                cm_conf=e.cm_conf, cm_iou=e.cm_iou, error_ious=error_ious(e.errors),
                errors_limit=e.errors_limit, sink=sink,
            )  # fmt: skip
        finally:
            if sink is not None:
                sink.close()
    meta = {
        "weights": str(weights), "annotations": annotations, "split": e.split,
        "img_size": cfg.train.img_size, "conf": e.conf, "iou": e.iou, "max_det": e.max_det,
        "device": str(det.device),
    }  # fmt: skip
    report = Evaluation(result, meta, Path(out) if out is not None else None, {})
    if out is not None:
        report.files = write_report(
            result, report.out, meta, plots=plots, source=dataset, worst=e.worst if plots else 0
        )
        sink.path.unlink(missing_ok=True)  # predictions.json holds every detection now
    best = result.thresholds.best.get("all") if result.thresholds is not None else None
    if store_conf and best is not None:
        try:
            report.stored_in = write_thresholds(weights, {**result.thresholds.to_dict()["best_f1"],
                                                          "annotations": annotations})  # fmt: skip
            report.stored_conf = best.conf
        except OSError as err:
            report.store_error = str(err)
    return report


@dataclass
class DataCheck:
    """What :func:`check_data` found and wrote; ``report``: the table training prints."""

    report: str
    stats: dict[str, dict[str, Any]]
    out: Path
    data_format: str
    augmented: Path | None = None


def check_data(
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    out: str | Path | None = None,
    show_aug: int = 0,
    epoch: int = 0,
) -> DataCheck:
    """Open a dataset's splits (``config``: an experiment file, a :class:`Config`, a data file or
    a data config name) and write to ``out`` (default a new ``runs/check_data/<format>``) the
    checks' report, statistics, class and box-size plots, ``show_aug`` samples of ``epoch``."""
    from detkit.config.build import build_dataset, build_detection_dataset
    from detkit.core.io import next_run_dir, write_json
    from detkit.data import data_report
    from detkit.data import stats as data_stats
    from detkit.data.sniff import sniff_data_file

    check_verb_keys("check_data", check_overrides(overrides or []))
    if config is None or isinstance(config, Config):
        cfg = resolve(config, overrides)
    elif sniff_data_file(Path(config), ("data", "model", "train", "eval")) == "sections":
        cfg = load_config(config, overrides)
    else:
        cfg = load_config(None, [f"data={config}", *(overrides or [])])
    sources = {split: build_dataset(cfg.data, split) for split in splits}
    out = Path(out) if out is not None else next_run_dir("runs/check_data", cfg.data.format)
    out.mkdir(parents=True, exist_ok=True)  # only once the splits opened
    result = DataCheck(data_report(sources, out, log=False), {}, out, cfg.data.format)
    for split, source in sources.items():
        stats = data_stats.dataset_statistics(source)
        title = f"{split} ({cfg.data.format})"
        data_stats.plot_classes(stats, title, out / f"{split}_classes.png")
        data_stats.plot_box_sizes(stats, title, out / f"{split}_box_sizes.png")
        result.stats[split] = stats
    write_json(out / "stats.json", {s: {k: v for k, v in st.items() if not k.startswith("_")}
                                    for s, st in result.stats.items()}, indent=1)  # fmt: skip
    if show_aug > 0:
        split = "train" if "train" in sources else splits[0]
        dataset = build_detection_dataset(cfg, sources[split], train=split == "train")
        names = sources[split].class_names
        grid = out / "augmented.png"
        result.augmented = data_stats.augmentation_grid(dataset, show_aug, names, grid, epoch)
    return result


def convert(
    src: str | Path,
    to: str,
    out: str | Path,
    *,
    src_format: str | None = None,
    data: str | None = None,
    overrides: list[str] | None = None,
    splits: tuple[str, ...] = ("train", "val"),
    images: str = "copy",
) -> dict[str, Any]:
    """Convert a dataset (a folder whose format is ``src_format``, or a COCO json / data.yaml;
    ``data``: a data config to start from, ``overrides``: its layout) to ``to`` (``coco``,
    ``voc``, ``yolo``) in a new folder ``out``; returns ``{"sources": {split: reader},
    "counts": {split: counts}}``. ValueError: ``out`` exists, a folder without ``src_format``,
    or a format mismatch."""
    from detkit.config.build import build_dataset
    from detkit.data import convert_dataset

    check_verb_keys("convert", check_overrides(overrides or []))
    base = [f"data={data}"] if data else []
    is_file = Path(src).is_file()  # data.root=<file> reads a COCO json or a data.yaml
    if not is_file and src_format is None:
        raise ValueError(
            f"{src} is a folder: say its format with --from coco|voc|yolo "
            "(or give the annotation json / data.yaml itself)"
        )
    where = [f"data.root={src}"] if is_file else [f"data.format={src_format}", f"data.root={src}"]
    if Path(out).exists():
        raise ValueError(f"{out} exists; convert writes a new folder (give another OUT)")
    cfg = load_config(None, [*base, *where, *(overrides or [])]).data
    if src_format is not None and cfg.format != src_format:
        raise ValueError(f"{src} is a {cfg.format} dataset, not --from {src_format}")
    sources = {split: build_dataset(cfg, split) for split in splits}
    return {"sources": sources, "counts": convert_dataset(sources, to, out, images=images)}


def anchors(
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    levels: int = 3,
    per_level: int = 3,
    seed: int = 0,
) -> tuple[list[list[list[float]]], dict[str, float]]:
    """k-means anchors of the config's train split at its ``img_size``, ``[levels][per_level][w,
    h]`` input px, and how well they fit (mean_iou, recall, anchors_per_box, boxes, img_size)."""
    from detkit.config.build import build_dataset
    from detkit.models.anchors import fit_anchors

    cfg = resolve(config, overrides)
    size = cfg.train.img_size
    found, fit = fit_anchors(build_dataset(cfg.data, "train"), size, levels, per_level, seed=seed)
    return found, {**fit, "img_size": size}


def model_summary(
    model: str,
    img_size: int | tuple[int, int] = 320,
    num_classes: int = 80,
    *,
    depth: int | None = None,
    overrides: list[str] | None = None,
) -> ModelSummary:
    """:func:`detkit.summary` of an untrained model from a model config (a name under
    ``configs/models/`` or a YAML path) and model-section overrides."""
    from detkit.config.build import build_model
    from detkit.models.summary import summary

    cfg = load_config(overrides=[f"model={model}", *(overrides or [])])
    net = build_model(cfg.model, num_classes, load_weights=False)  # shapes only
    result = summary(net, img_size, depth=depth)
    result.title = f"{model} ({cfg.model.arch}, {num_classes} classes)"
    return result
