"""Where config becomes objects (datasets, model, loss, optimiser) and a checkpoint's ``deploy``
record becomes its model; what is built here receives plain objects and values."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkit.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    section_from_dict,
)
from detkit.core.deploy import Deploy
from detkit.data import (
    Augment,
    CocoDataset,
    DetectionDataset,
    DetectionSource,
    ImageCache,
    VocDataset,
    YoloDataset,
    build_transforms,
    ensure_shapes,
)
from detkit.data.shapes_hard import VARIANTS
from detkit.engine.device import select_device
from detkit.engine.state import TrainOptions
from detkit.models.anchors import fit_anchors
from detkit.models.backbone import load_backbone_weights
from detkit.models.blocks import CSP_BLOCKS
from detkit.models.checkpoint import CheckpointError, load_checkpoint, load_weights
from detkit.models.losses import SSDLoss, YOLOLoss
from detkit.models.losses.base import Criterion
from detkit.models.ssd import SSD
from detkit.models.transfer import LoadReport, architecture_differences, freeze, transfer_weights
from detkit.models.tv_backbone import TORCHVISION, TorchvisionBackbone, load_pretrained
from detkit.models.yolo import HEAD_BRANCHES, YOLO, GridDetector

log = logging.getLogger(__name__)

MODELS = {"yolo": GridDetector, "yolo_csp": YOLO, "ssd": SSD}
DATA_FORMATS = ("shapes", "coco", "voc", "yolo")


def _pick(section: object, names: str) -> dict[str, Any]:
    """The named fields of a config section, as the keyword arguments of the same names."""
    return {name: getattr(section, name) for name in names.split()}


def build_model(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> nn.Module:
    """A :class:`detkit.core.protocols.DetectionModel` for ``num_classes`` from its config section;
    ``load_weights``: ``backbone_weights`` or ``pretrained`` (False: a checkpoint holds them)."""
    if cfg.arch not in MODELS:
        raise ValueError(f"model.arch {cfg.arch!r} unknown; choose one of {', '.join(MODELS)}")
    common = {"num_classes": num_classes, "obj_prior": cfg.obj_prior}
    if cfg.arch == "yolo":
        if cfg.backbone:
            raise ValueError("model.backbone is for yolo_csp and ssd; the yolo spine has its own")
        model = GridDetector(**_pick(cfg, "widths strides anchors neck_width"), **common)
    elif cfg.arch == "yolo_csp":
        if list(cfg.strides) != list(YOLO.strides_fixed):
            raise ValueError(f"model.strides must be {list(YOLO.strides_fixed)} for yolo_csp")
        if cfg.backbone and cfg.backbone not in TORCHVISION:
            raise ValueError(
                f"model.backbone {cfg.backbone!r} unknown for yolo_csp; leave it empty for "
                f"CSPDarknet or choose a torchvision backbone: {', '.join(TORCHVISION)}"
            )
        for key, valid in (("block", CSP_BLOCKS), ("head_branches", HEAD_BRANCHES)):
            if (value := getattr(cfg, key)) not in valid:
                raise ValueError(f"model.{key} {value!r} unknown; choose one of {', '.join(valid)}")
        csp = "widths depths width_mult depth_mult anchors head_width backbone head_branches block"
        model = YOLO(**_pick(cfg, csp), **common)
    else:
        model = SSD(
            **_pick(cfg, "backbone width_mult extras scales aspect_ratios lite"),
            variances=(cfg.variances[0], cfg.variances[1]),
            **common,
        )
        if list(cfg.strides) != model.strides:
            raise ValueError(
                f"model.strides {cfg.strides} do not match the {cfg.backbone} backbone and "
                f"{len(cfg.extras)} extra levels: they are {model.strides}"
            )
    if load_weights:
        load_backbone(model, cfg)
    return model


def load_backbone(model: nn.Module, cfg: ModelConfig) -> None:
    """Give ``model``'s backbone ``backbone_weights`` or, with ``pretrained``, torchvision's.
    ValueError: no torchvision weights for it; FileNotFoundError: no file, or offline, uncached."""
    if cfg.backbone_weights:
        if cfg.pretrained:
            log.info("backbone_weights=%s given: pretrained=true not used", cfg.backbone_weights)
        load_backbone_weights(model.backbone, cfg.backbone_weights)
    elif cfg.pretrained:
        if not isinstance(model.backbone, TorchvisionBackbone):
            name = cfg.backbone or {"yolo": "spine", "yolo_csp": "CSPDarknet"}[cfg.arch]
            raise ValueError(
                f"pretrained=true: torchvision has no ImageNet weights for the {name} backbone; "
                f"choose backbone= one of {', '.join(TORCHVISION)} (arch yolo_csp), start from "
                "a detkit checkpoint with weights=FILE, or give backbone_weights=FILE"
            )
        load_pretrained(model.backbone)


def check_architecture(theirs: dict, m: ModelConfig, path: str | Path) -> None:
    """Refuse (ValueError, each field named) ``weights=path`` whose model section ``theirs`` is
    another architecture or size."""
    if diffs := architecture_differences(theirs, asdict(m)):
        which = "; ".join(f"{k} {a!r} there, {b!r} here" for k, a, b in diffs)
        raise ValueError(
            f"weights={path} is another model than this run's ({which}): leave model= out to "
            "fine-tune the checkpoint's own model, or start a new model's backbone with "
            "backbone_weights="
        )


def initial_weights(
    model: nn.Module,
    t: TrainConfig,
    class_names: list[str],
    fresh: bool = True,
    ckpt: dict | None = None,
) -> str | None:
    """Load ``t.weights`` (``ckpt`` when read already) into a new run's ``model`` (shapes that
    match, class rows by name, EMA when present), then freeze ``t.freeze`` (on a resume too);
    returns the report, None when neither was asked. CheckpointError: unreadable weights;
    ValueError: a ``freeze`` naming nothing."""
    report = LoadReport("")
    if fresh and t.weights:
        ckpt = ckpt if ckpt is not None else load_checkpoint(t.weights)
        which = "ema" if ckpt.get("ema") else "model"
        source = f"{t.weights} ({which} weights, epoch {ckpt.get('epoch', '?')})"
        names = list(ckpt.get("class_names") or checkpoint_deploy(ckpt, t.weights).class_names)
        report = transfer_weights(model, ckpt[which], names, list(class_names), source)
    report.frozen, report.frozen_params = freeze(model, t.freeze)
    return report.table() if report.parts or report.frozen else None


def fit_auto_anchors(
    cfg: Config, train_source: object, say: Callable[[str], object] = print
) -> Config:
    """``cfg`` itself when ``model.auto_anchors`` is 0, else a copy with that many k-means anchors
    per stride of the training boxes at ``train.img_size`` and ``auto_anchors`` 0 (the one-line
    report goes to ``say``). ValueError: ``auto_anchors`` on an SSD."""
    m = cfg.model
    if m.auto_anchors <= 0:
        return cfg
    if m.arch == "ssd":
        raise ValueError("model.auto_anchors is for grid models; SSD sets its boxes with scales")
    size = cfg.train.img_size
    anchors, fit = fit_anchors(train_source, size, len(m.strides), m.auto_anchors, ratio=m.anchor_t)
    say(
        f"auto anchors: {m.auto_anchors} per stride from {fit['boxes']} train boxes at {size} px "
        f"(mean best shape IoU {fit['mean_iou']:.3f}, {fit['recall']:.1%} of boxes within ratio "
        f"{m.anchor_t:g} of one): {anchors}"
    )
    return replace(cfg, model=replace(m, anchors=anchors, auto_anchors=0))


def build_loss(model: nn.Module, m: ModelConfig) -> Criterion:
    """The criterion for ``model`` from the model section ``m``: SSD's or YOLO's."""
    common = _pick(m, "box_weight obj_weight cls_weight box_loss label_smoothing obj_prior")
    common |= {"num_classes": model.num_classes, "beta": m.box_beta}
    if isinstance(model, SSD):
        ssd = _pick(m, "match_iou neg_pos_ratio")
        return SSDLoss(variances=model.coder.variances, **ssd, **common)
    grid = _pick(
        m, "assigner anchor_t cls_loss obj_loss obj_iou obj_balance focal_alpha focal_gamma"
    )
    return YOLOLoss(
        strides=model.strides, anchors=model.anchors, xy_scale=model.xy_scale, **grid, **common
    )


def dataset_root(cfg: DataConfig) -> Path:
    """The dataset folder; for the built-in set, generated on first use. ValueError: an unknown
    ``format``, an empty ``root``; FileNotFoundError: no ``root``."""
    if cfg.format == "shapes":
        root = Path(cfg.root) if cfg.root else None
        if cfg.variant not in VARIANTS:
            raise ValueError(f"data.variant {cfg.variant!r} unknown; choose {', '.join(VARIANTS)}")
        return ensure_shapes(
            root, cfg.num_train, cfg.num_val, cfg.synth_seed, variant=VARIANTS[cfg.variant]
        )
    if cfg.format not in DATA_FORMATS:
        raise ValueError(f"data.format {cfg.format!r} unknown; choose {', '.join(DATA_FORMATS)}")
    if not cfg.root:
        raise ValueError("data.root is empty: point it at the dataset folder (root=/path)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a folder")
    return root


def build_dataset(cfg: DataConfig, split: str, workers: int | None = None) -> DetectionSource:
    """The ``train`` or ``val`` split opened and checked (a :class:`~detkit.core.protocols.
    DetectionSplit`), every image decoded once by ``workers`` processes (None: CPUs, at most 8)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = dataset_root(cfg)
    common = _pick(cfg, "skip_invalid max_pixels min_image_side") | {
        "name": f"{split} ({cfg.format})",
        "cache_dir": cfg.cache_dir or None,
        "decode_workers": workers,
    }
    if cfg.format == "voc":
        splits = cfg.voc_train if split == "train" else cfg.voc_val
        dataset: DetectionSource = VocDataset(root, list(splits), cfg.class_names or None, **common)
    elif cfg.format == "yolo":
        dataset = YoloDataset(root / cfg.yolo_yaml, split, cfg.class_names or None, **common)
    else:
        ann, images = getattr(cfg, f"{split}_ann"), getattr(cfg, f"{split}_images")
        # no images folder given (a json passed as data=): found around the json
        dataset = CocoDataset(root / ann, root / images if images else None, split=split, **common)
        if cfg.class_names and list(cfg.class_names) != dataset.class_names:
            raise ValueError(
                f"data.class_names {cfg.class_names} differ from the categories of {root / ann}: "
                f"{dataset.class_names}"
            )
    dataset.report.raise_if_empty()
    if split == "train" and cfg.fraction < 1.0:
        dataset.keep_first(max(1, round(len(dataset) * cfg.fraction)))
    return dataset


def build_augment(cfg: Config) -> Augment:
    """Training augmentation from the data section (and ``train.hflip``, ``train.epochs``); no
    mosaic from epoch ``epochs - close_mosaic`` on."""
    d = cfg.data
    if len(d.aug_scale) != 2:
        raise ValueError(f"data.aug_scale must be [min, max], got {d.aug_scale}")
    off = cfg.train.epochs - d.close_mosaic if d.close_mosaic > 0 else None
    return Augment(
        **_pick(d, "affine translate degrees blur noise mosaic min_visibility"),
        hflip=cfg.train.hflip,
        scale=(float(d.aug_scale[0]), float(d.aug_scale[1])),
        hsv=(d.hsv_h, d.hsv_s, d.hsv_v),
        mosaic_off_epoch=off,
        min_area=d.min_box_area,
    )


def build_detection_dataset(cfg: Config, source: DetectionSource, train: bool) -> DetectionDataset:
    """The torch dataset over ``source``: letterbox to ``train.img_size``, plus the configured
    augmentation (mosaic included) in training, plus the RAM cache when ``cache_images``."""
    size = cfg.train.img_size
    transform = build_transforms(size, train=train, augment=build_augment(cfg) if train else None)
    cache = ImageCache(source, size) if cfg.data.cache_images else None
    return DetectionDataset(source, transform, seed=cfg.train.seed, cache=cache)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only, never on norm layers and biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, nn.Conv2d | nn.Linear)
            (decay if is_weight else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov unless ``nesterov=false``), AdamW or Adam (``momentum`` as beta1;
    Adam's weight decay is the L2 term, as Ultralytics') over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    adam = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(cfg.optimizer)
    if adam is None:
        raise ValueError(f"train.optimizer {cfg.optimizer!r} unknown; choose sgd, adam or adamw")
    return adam(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def train_options(
    cfg: Config, accumulate: int, amp: torch.dtype | None, stride: int
) -> TrainOptions:
    """The trainer loop's options: the train and eval fields it reads, the recipe line, and what
    building chose (batches per update, autocast dtype, the multi-scale stride)."""
    from detkit.eval.runner import error_ious

    t, e = cfg.train, cfg.eval
    scoring = {"val_conf": e.conf, "cm_conf": e.cm_conf, "cm_iou": e.cm_iou,
               "error_ious": error_ious(e.errors)}  # fmt: skip
    recipe = cfg.recipe.line() if cfg.recipe else ""
    built = {"recipe": recipe, "accumulate": accumulate, "amp": amp, "stride": stride}
    names = [f for f in TrainOptions.__dataclass_fields__ if f not in scoring | built]
    return TrainOptions(**{f: getattr(t, f) for f in names}, **scoring, **built)


def deploy_record(cfg: Config, class_names: list[str], cat_ids: list[int] | None) -> Deploy:
    """A run's ``deploy`` record: inference ``conf`` at its default, eval ``iou`` and ``max_det``."""
    return Deploy(
        # the checkpoint holds every weight: no file, no download when it is loaded
        model=asdict(replace(cfg.model, backbone_weights="", pretrained=False)),
        class_names=list(class_names),
        img_size=cfg.train.img_size,
        cat_ids=[int(c) for c in cat_ids] if cat_ids is not None else None,
        iou=cfg.eval.iou,
        max_det=cfg.eval.max_det,
    )


def checkpoint_deploy(ckpt: dict, path: str | Path) -> Deploy:
    """A checkpoint's :class:`Deploy` record (from its ``config`` when it has none), the model
    section validated (CheckpointError when it does not fit the schema)."""
    try:
        if "deploy" not in ckpt:
            cfg = config_from_dict(ckpt["config"])
            return deploy_record(cfg, ckpt["class_names"], ckpt.get("cat_ids"))
        deploy = Deploy.from_dict(ckpt["deploy"])
        section_from_dict("model", deploy.model)
    except ConfigError as e:
        raise CheckpointError(f"{path} does not fit this detkit: {e}") from None
    return deploy


def load_model(path: str | Path, device: str = "") -> tuple[nn.Module, dict, Deploy]:
    """``(model in eval mode on device, checkpoint dict, deploy record)`` of a checkpoint, with
    its weights (EMA when present). CheckpointError: unreadable, not a detkit checkpoint,
    weights that do not fit, or outputs that are NaN/inf (:func:`check_outputs`)."""
    ckpt = load_checkpoint(path)
    deploy = checkpoint_deploy(ckpt, path)
    model = build_model(section_from_dict("model", deploy.model), len(deploy.class_names), False)
    load_weights(model, ckpt.get("ema") or ckpt["model"], path)
    check_outputs(model, deploy.img_size, path)
    return model.to(select_device(device)).eval(), ckpt, deploy


def check_outputs(model: nn.Module, img_size: int, path: str | Path) -> None:
    """CheckpointError when one forward of a grey ``[1, 3, S, S]`` image gives NaN/inf: finite
    weights can (a negative BN variance), and would read as "no detections" everywhere."""
    image = torch.full((1, 3, img_size, img_size), 114 / 255)
    with torch.inference_mode():
        raw = model.eval()(image)
    outputs = raw if isinstance(raw, list | tuple) else [raw]
    if not all(bool(torch.isfinite(t).all()) for t in outputs if torch.is_tensor(t)):
        raise CheckpointError(
            f"{path}: its weights are finite but the model's outputs are NaN/inf (on a grey "
            f"{img_size}x{img_size} image), so it would detect nothing anywhere; batch-norm "
            "statistics or scales may be damaged: use another checkpoint of the run (last.pt / "
            "best.pt / epochN.pt) or retrain"
        )
