"""Configuration as data: YAML validated into four section dataclasses. Later layers win: the
defaults (or the model's recipe), the experiment file, then ``key=value`` overrides; unknown keys,
wrong types and values out of range raise :class:`ConfigError` (docs/training.md#config)."""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import yaml

from detkit.core.deploy import CM_CONF, CM_IOU, EVAL, MAX_PIXELS
from detkit.core.yamlio import YamlError, load_yaml
from detkit.data.sniff import sniff_data_file, val_json_for
from detkit.engine.resume import flatten

# package data, so an installed wheel finds them; the repository's configs/ links here
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

logger = logging.getLogger(__name__)

# Ultralytics' names for detkit fields with the same meaning: accepted, with a note.
ALIASES = {
    "imgsz": "img_size",
    "lr0": "lr",
    "lrf": "final_lr_ratio",
    "nbs": "nominal_batch",
    "fliplr": "hflip",
    "box": "box_weight",
    "cls": "cls_weight",
}

WEIGHTS_SUFFIXES = (".pt", ".pth")  # `model=<file with one of these>` means weights=<file>
FINETUNE_RECIPE = "finetune"  # configs/recipes/finetune.yaml: the recipe of a run from weights=
RECIPE_SECTIONS = ("data", "train")  # what a recipe may set
SAVED = "saved config"  # where a checkpoint's config is read: its translations are not news

# Older configs' train keys for the loss weights and beta -> the model field each is read as.
MOVED_KEYS = {
    "train.box_weight": "box_weight",
    "train.obj_weight": "obj_weight",
    "train.cls_weight": "cls_weight",
    "train.smooth_l1_beta": "box_beta",
}

# the data keys of each format (the others do nothing under it)
_COCO_KEYS = ("train_ann", "train_images", "val_ann", "val_images")
_FORMAT_KEYS = {
    "coco": _COCO_KEYS,
    "voc": ("voc_train", "voc_val"),
    "yolo": ("yolo_yaml",),
    "shapes": ("num_train", "num_val", "synth_seed", "variant", *_COCO_KEYS),  # written as COCO
}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _as_bool(key: str, value: object) -> bool:
    """A YAML bool (``True``, ``false``, ...) of an Ultralytics switch; else an error."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}={value!r}: expected true or false")


def _cache_value(value: object) -> bool:
    """Ultralytics ``cache=``: ``ram``/``true`` keeps resized images in RAM, ``false`` not."""
    text = value.lower() if isinstance(value, str) else value
    if text == "disk":
        raise ConfigError(
            "cache=disk: detkit caches images in RAM only (cache=ram, i.e. cache_images=true); "
            "opened splits and decode checks are cached on disk already"
        )
    return text == "ram" or _as_bool("cache", value)


def _scale_value(value: object) -> list[float]:
    """Ultralytics ``scale=g`` (zoom by 1 +- g) as detkit's ``aug_scale`` range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(f"scale={value!r}: expected a gain in [0, 1) (aug_scale=[1-g, 1+g])")
    return [1.0 - float(value), 1.0 + float(value)]


# Ultralytics' names whose values translate into a detkit field: name -> (field, translation).
VALUE_ALIASES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "cos_lr": ("schedule", lambda v: "cosine" if _as_bool("cos_lr", v) else "linear"),
    "cache": ("cache_images", _cache_value),
    "scale": ("aug_scale", _scale_value),
    "verbose": ("quiet", lambda v: not _as_bool("verbose", v)),
}

# Ultralytics' names with no detkit counterpart, and why (an error says so, not "did you mean").
NO_COUNTERPART = {
    "dfl": "detkit's losses have no distribution focal loss part; the parts are weighted by "
    "box_weight, obj_weight and cls_weight",
    "flipud": "detkit has no vertical flip (hflip= is the horizontal one)",
    "mixup": "detkit has no mixup (mosaic= is its multi-image augmentation)",
    "copy_paste": "detkit has no copy-paste augmentation (it needs masks)",
    "single_cls": "detkit trains the dataset's classes as they are",
    "rect": "training and evaluation letterbox every image to a square img_size",
    "resume": "resume is not a setting: detkit train --resume runs/train/NAME/last.pt (or "
    "resume=true for the newest last.pt), detkit.resume(path) in Python",
}

# Choices of string fields, any case (``optimizer=SGD``); ``auto`` is the default.
CHOICES = {"train.optimizer": ("sgd", "adam", "adamw"), "train.schedule": ("cosine", "linear")}


@dataclass(frozen=True)
class Range:
    """The valid interval of a numeric field (``None``: unbounded on that side)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    auto: int | None = None  # a value outside the range that means "chosen automatically"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        left = "-inf" if self.lo is None else f"{self.lo:g}"
        right = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open or self.lo is None else '['}{left}, {right}{')' if self.hi_open or self.hi is None else ']'}"


AUTO_BATCH = -1  # train.batch=-1: the batch is chosen when training starts (engine/autobatch.py)

# A numeric field's type carries its valid range (:func:`check_ranges`); in a list type the
# range holds for every element (``widths: list[Count]``).
Count = Annotated[int, Range(1)]
Natural = Annotated[int, Range(0)]
Batch = Annotated[int, Range(1, auto=AUTO_BATCH)]
NonNeg = Annotated[float, Range(0)]
Positive = Annotated[float, Range(0, lo_open=True)]
Prob = Annotated[float, Range(0, 1)]
Fraction = Annotated[float, Range(0, 1, hi_open=True)]
Share = Annotated[float, Range(0, 1, lo_open=True)]
Degrees = Annotated[float, Range(0, 180)]  # also OpenCV's hue
Level = Annotated[float, Range(0, 255)]


@dataclass(frozen=True)
class For:
    """The architectures a model field serves; :func:`idle_keys` refuses it under another."""

    archs: tuple[str, ...]
    why: str


GRID = For(("yolo", "yolo_csp"), "a grid-model setting (SSD's boxes come from scales and "
           "aspect_ratios, its matching from match_iou)")  # fmt: skip
SPINE = For(("yolo",), "the yolo spine's setting; yolo_csp sizes its neck from widths and "
            "width_mult, SSD has no such neck")  # fmt: skip
CSP = For(("yolo_csp",), "a yolo_csp (YOLO n/s/m) setting, and model.arch is {arch}")
NOT_SPINE = For(("yolo_csp", "ssd"), "not a yolo spine setting (its channels are widths, its "
                "backbone its own)")  # fmt: skip
SSD = For(("ssd",), "an SSD setting, and model.arch is {arch}")


def field_mark(hint: object, kind: type[Any] = Range) -> Any:
    """The ``kind`` mark (:class:`Range`, :class:`For`) a field's type carries at any depth
    (``list[Count]``, ``NonNeg | None``), or None."""
    if typing.get_origin(hint) is Annotated:
        found = [m for m in hint.__metadata__ if isinstance(m, kind)]
        return found[0] if found else field_mark(hint.__origin__, kind)
    return next(filter(None, (field_mark(a, kind) for a in typing.get_args(hint))), None)


def _numbers(value: object) -> list[float]:
    """Every number in a value (nested lists flattened); bools are not numbers."""
    if isinstance(value, list | tuple):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


def check_ranges(section: str, obj: object) -> None:
    """Raise :class:`ConfigError` naming the field and its valid range (lists: every element)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in fields(obj):
        rng, value = field_mark(hints[f.name]), getattr(obj, f.name)
        if rng is None or (rng.auto is not None and value == rng.auto):
            continue
        for number in _numbers(value):
            if not rng.contains(number):
                also = f" or {rng.auto} (automatic)" if rng.auto is not None else ""
                raise ConfigError(
                    f"{section}.{f.name}={value!r} is out of range: valid {rng}{also}"
                )


@dataclass
class DataConfig:
    """Where the dataset lives (``format``: shapes, coco, voc or yolo; paths relative to
    ``root``), how it is read and checked, and how training augments it."""

    format: str = "shapes"
    root: str = ""
    train_ann: str = "annotations/instances_train.json"
    train_images: str = "images/train"
    val_ann: str = "annotations/instances_val.json"
    val_images: str = "images/val"
    voc_train: list[str] = field(default_factory=lambda: ["VOC2007/trainval", "VOC2012/trainval"])
    voc_val: list[str] = field(default_factory=lambda: ["VOC2007/test"])
    yolo_yaml: str = "data.yaml"
    class_names: list[str] = field(default_factory=list)  # voc (default: the 20); yolo: check
    skip_invalid: bool = False  # skip (and count) unknown classes, malformed rows, escaping paths
    max_pixels: Count = MAX_PIXELS  # decompression-bomb limit, width x height
    min_image_side: Count = 10  # px; smaller images are skipped
    cache_dir: str = ""  # converted ground truth for evaluation; empty: $DETKIT_HOME/cache
    cache_images: bool = False  # keep letterbox-resized images in RAM (fills at start)
    fraction: Share = 1.0  # train on the first fraction of the training split's images
    num_train: Count = 2000
    num_val: Count = 200
    synth_seed: Natural = 0
    variant: str = "easy"  # shapes only: easy (the demo set) | hard (the benchmark set)
    mosaic: Prob = 0.0  # probability of a 4-image mosaic
    close_mosaic: Natural = 0  # no mosaic in the last N epochs
    affine: Prob = 0.5  # probability of the random affine (aug_scale, translate, degrees)
    aug_scale: list[Positive] = field(default_factory=lambda: [0.75, 1.25])
    translate: Fraction = 0.1  # largest shift, fraction of the input side
    degrees: Degrees = 0.0  # largest rotation (boxes of rotated objects grow)
    hsv_h: Degrees = 10.0  # hue shift limit; hsv_h = hsv_s = hsv_v = 0 turns colour jitter off
    hsv_s: Level = 30.0  # saturation shift limit
    hsv_v: Level = 20.0  # value (brightness) shift limit
    blur: Prob = 0.0  # probability of a Gaussian blur
    noise: Prob = 0.0  # probability of Gaussian noise
    min_visibility: Prob = 0.25  # boxes keeping less of their area after augmentation are dropped
    min_box_area: NonNeg = 0.0  # input px^2; smaller augmented boxes are dropped


@dataclass
class ModelConfig:
    """A detector (``arch``: yolo, yolo_csp or ssd) and its criterion; a field's type names the
    architectures it serves (:class:`For`). ``anchors``: per stride, (w, h) sizes in input px."""

    arch: str = "yolo"
    strides: list[Count] = field(default_factory=lambda: [8, 16, 32])
    # initial confidence (foreground probability for ssd)
    obj_prior: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.01
    box_loss: str = "smooth_l1"  # smooth_l1 | iou | giou | diou | ciou
    label_smoothing: Fraction = 0.0
    focal_alpha: Prob = 0.25
    focal_gamma: NonNeg = 2.0
    box_weight: NonNeg = 5.0  # loss = box_weight * box + obj_weight * obj + cls_weight * cls
    obj_weight: NonNeg = 1.0
    cls_weight: NonNeg = 1.0
    box_beta: NonNeg = 0.1  # smooth L1 beta
    backbone_weights: str = ""  # a local state-dict file for the backbone (weights_only)
    pretrained: bool = False  # torchvision backbones: ImageNet weights via torchvision's cache
    # grid models (yolo, yolo_csp)
    widths: Annotated[list[Count], GRID] = field(default_factory=lambda: [16, 32, 64, 128, 192])
    anchors: Annotated[list[list[list[Positive]]], GRID] = field(
        default_factory=lambda: [[[24.0, 24.0]], [[56.0, 56.0]], [[128.0, 128.0]]]
    )
    auto_anchors: Annotated[Natural, GRID] = 0  # >0 fits this many k-means anchors per level
    assigner: Annotated[str, GRID] = "center"  # center | neighbors
    anchor_t: Annotated[float, Range(1), GRID] = 4.0  # neighbors: largest object/anchor ratio
    cls_loss: Annotated[str, GRID] = "ce"  # ce | focal | hinge
    obj_loss: Annotated[str, GRID] = "bce"  # bce | focal
    obj_iou: Annotated[Prob, GRID] = 0.0  # confidence target (1 - r) + r * IoU (0: target 1)
    obj_balance: Annotated[list[NonNeg], GRID] = field(default_factory=list)  # per-level weights
    neck_width: Annotated[Count, SPINE] = 64
    # yolo_csp (YOLO n/s/m)
    depths: Annotated[list[Natural], CSP] = field(default_factory=list)  # base depths, 4 stages
    depth_mult: Annotated[Positive, CSP] = 1.0  # blocks multiplier
    head_width: Annotated[Natural, CSP] = 0  # 0 = coupled 1x1 heads; >0 = decoupled branches
    head_branches: Annotated[str, CSP] = "conv"  # decoupled: conv | dw_cls | dw (depthwise)
    block: Annotated[str, CSP] = "c3"  # the CSP block of backbone and neck, c3 | c2f
    # yolo_csp and ssd
    width_mult: Annotated[Positive, NOT_SPINE] = 1.0  # channels multiplier
    # ssd: vgg16 | mobilenetv2; yolo_csp: "" (CSPDarknet) or a torchvision ImageNet backbone:
    # resnet18 | resnet50 | mobilenet_v3_large | efficientnet_b0 | convnext_tiny
    backbone: Annotated[str, NOT_SPINE] = ""
    # ssd
    lite: Annotated[bool, SSD] = False  # depthwise-separable extras and predictors (SSDLite)
    extras: Annotated[list[Count], SSD] = field(default_factory=list)  # extra levels' channels
    scales: Annotated[list[Positive], SSD] = field(default_factory=list)  # sizes / min(H, W)
    aspect_ratios: Annotated[list[list[Positive]], SSD] = field(default_factory=list)  # besides 1
    variances: Annotated[list[Positive], SSD] = field(default_factory=lambda: [0.1, 0.2])  # coder
    match_iou: Annotated[Share, SSD] = 0.5  # IoU from which a default box is positive
    neg_pos_ratio: Annotated[NonNeg, SSD] = 3.0  # hard negatives kept per positive


@dataclass
class TrainConfig:
    """The optimisation schedule and where runs are written."""

    epochs: Count = 12
    batch: Batch = 32  # -1: the largest that fits 60% of free CUDA memory (16 on a CPU)
    weights: str = ""  # start from a detkit checkpoint (fine-tuning; also model=best.pt)
    freeze: str = ""  # backbone | neck | N (the first N backbone stages, the neck as one)
    img_size: Annotated[int, Range(32)] = 256
    optimizer: str = "adamw"  # sgd | adam | adamw (auto: adamw); any case
    lr: Positive = 2e-3
    momentum: Fraction = 0.9
    weight_decay: NonNeg = 5e-4
    warmup_epochs: NonNeg = 1.0
    ema_decay: Fraction = 0.998
    grad_clip: NonNeg = 10.0
    hflip: Prob = 0.5
    workers: Natural = 8  # loader processes, at most the cores per local process (2 on 2 cores)
    device: str = ""
    amp: bool = True
    amp_dtype: str = "auto"  # CUDA autocast: auto (bf16 where native, else fp16) | bf16 | fp16
    seed: Natural = 0
    project: str = "runs/train"
    name: str = ""
    exist_ok: bool = False  # write into an existing project/name folder (its files replaced)
    eval_every: Count = 1
    val: bool = True  # False: validate only after the last epoch (Ultralytics' val=False)
    max_steps: Natural = 0  # stop (resumably) after this many batches; the schedule keeps `epochs`
    quiet: bool = False
    nesterov: bool = True  # SGD only
    schedule: str = "cosine"  # LR decay after warmup: cosine | linear
    final_lr_ratio: Prob = 0.05  # LR at the last step, as a fraction of lr
    nominal_batch: Natural = 0  # accumulate gradients to this many images per update (0: batch)
    multi_scale: Fraction = 0.0  # +- fraction of img_size drawn per batch (multiples of 32)
    patience: Natural = 0  # early stopping: epochs without a better mAP50-95 (0: off)
    max_nonfinite: Natural = 10  # consecutive skipped NaN/inf updates that stop training (0: never)
    save_every: Natural = 0  # also write last.pt every N batches (0: at epoch ends only)
    save_period: Natural = 0  # also keep epochN.pt every N epochs (0: never)
    channels_last: bool = True  # NHWC model and batches, CUDA and CPU (both faster)
    compile: bool = False  # torch.compile the training model
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA
    dist_timeout: Positive = 30.0  # minutes a DDP collective waits for the slowest rank
    val_batch: Natural = 0  # validation images per rank and batch (0: the training batch per rank)
    tensorboard: bool = False  # needs the tensorboard package
    mlflow: bool = False  # log to MLflow (the mlflow extra; $MLFLOW_TRACKING_URI or runs/mlflow)
    plots: bool = True  # results.png at the end


@dataclass
class EvalConfig:
    """Post-processing and metric settings shared by evaluation and inference."""

    conf: Prob = EVAL.conf
    iou: Prob = EVAL.iou
    max_det: Count = EVAL.max_det
    split: str = "val"
    cm_conf: Prob = CM_CONF  # confusion matrix: detections counted from this score
    cm_iou: Prob = CM_IOU  # confusion matrix: matching IoU
    worst: Natural = 12  # `detkit eval`: draw the images of most error weight in worst/ (0: none)
    errors: str = "0.5"  # breakdown IoUs: "0.5", "0.5:0.95" (adds dAP50-95, ~5x the cost), "off"
    errors_limit: Natural = 200_000  # skip the breakdown above this many detections (0: no limit)


@dataclass(frozen=True)
class RecipeNote:
    """Where a run's recipe values (``values``, by dotted key) came from, which ones the config
    or command line ``replaced``, and the model's recipe ``finetune`` was used ``instead_of``."""

    name: str
    path: str
    values: dict[str, Any]
    replaced: dict[str, Any]
    instead_of: str = ""

    def line(self) -> str:
        """One line for the log: the values in force and which of them you replaced."""
        used = [f"{k.split('.')[-1]}={v}" for k, v in self.values.items() if k not in self.replaced]
        instead = f", in place of the model's recipe {self.instead_of!r}" if self.instead_of else ""
        why = f"; weights= given{instead}" if self.name == FINETUNE_RECIPE else ""
        text = f"recipe {self.name!r} ({self.path}{why}): {' '.join(used) or 'nothing'}"
        if self.replaced:
            mine = ", ".join(
                f"{k.split('.')[-1]}={v} (recipe {self.values[k]})"
                for k, v in self.replaced.items()
            )
            text += f"; set by your config or command line instead: {mine}"
        return text


@dataclass
class Config:
    """A whole run: the four sections, and the note of its recipe (not in :meth:`to_dict`)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: RecipeNote | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the four sections (YAML- and checkpoint-safe)."""
        return {s: asdict(getattr(self, s)) for s in ("data", "model", "train", "eval")}


_SECTION_TYPES = dict(data=DataConfig, model=ModelConfig, train=TrainConfig, eval=EvalConfig)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            content = load_yaml(f, str(path))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except YamlError as e:
        raise ConfigError(f"{e.where}: invalid YAML: {e.problem}") from None
    if not isinstance(content, dict | None):
        raise ConfigError(
            f"{path}: expected a mapping at the top level, got {type(content).__name__}"
        )
    return content or {}


def resolve_file(name: str, section: str | None = None) -> Path:
    """Find a config file: a path as given, else ``configs/[section/]name[.yaml]``."""
    base = CONFIG_DIR / {"model": "models"}.get(section or "", section or "")
    candidates = [Path(name), base / name, base / f"{name}.yaml"]
    if found := next((c for c in candidates if c.is_file()), None):
        return found
    where = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"config {name!r} not found (looked for {where})")


def _check_type(value: object, tp: object, key: str) -> Any:
    """``value`` checked against a field type (int -> float allowed)."""
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(
                f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})"
            )
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            with contextlib.suppress(ConfigError):
                return _check_type(value, option, key)
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    return value


def did_you_mean(key: str, valid: list[str] | set[str], most: int = 5) -> str:
    """``"; did you mean 'x' or 'y'?"`` for up to ``most`` close valid keys (Ultralytics' names
    suggest the field they stand for), or ``""``.

    Example:
        >>> did_you_mean("imgsze", {"img_size", "epochs"})
        "; did you mean 'img_size'?"
    """
    if key in ALIASES and ALIASES[key] in valid:
        return f"; did you mean {ALIASES[key]!r}?"
    names = {k: k for k in valid}
    names |= {a: real for a, real in ALIASES.items() if real in valid and a not in names}
    names |= {a: a for a, (real, _) in VALUE_ALIASES.items() if real in valid and a not in names}
    scores = {n: difflib.SequenceMatcher(None, key, n).ratio() for n in sorted(names)}
    scores |= {n: max(r, 0.9) for n, r in scores.items() if n.startswith(key) and len(key) > 2}
    top = max(scores.values(), default=0.0)
    # the near-ties of the best match only: "weight_decay", not "ema_decay" too
    close = sorted((n for n, r in scores.items() if r >= max(0.55, top - 0.1)), key=scores.get,
                   reverse=True)  # fmt: skip
    if not (picks := list(dict.fromkeys(names[c] for c in close))[:most]):
        return ""
    quoted = [repr(p) for p in picks]
    text = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"; did you mean {text}?"


def _unknown_key(key: str, where: str, valid: list[str] | set[str]) -> ConfigError:
    hint = did_you_mean(key, valid) or " (no key is close; `detkit train --keys` lists every key)"
    if key in NO_COUNTERPART:
        hint = f": {NO_COUNTERPART[key]}"
    return ConfigError(f"{where}{': ' if where else ''}unknown key {key!r}{hint}")


def _field_value(cls: type, section: str, key: str, value: object, where: str) -> Any:
    """The value of field ``key`` of section ``cls``, its name, type and choice checked."""
    valid = [f.name for f in fields(cls)]
    if key not in valid:
        raise _unknown_key(key, where, valid)
    tp, dotted = typing.get_type_hints(cls)[key], f"{section}.{key}"
    if tp is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # device=0, name=2: YAML reads them as numbers
    value = _check_type(value, tp, dotted)
    if dotted not in CHOICES:
        return value
    text = value.lower()  # a choice field: any case, "auto" for the field's default
    text = getattr(cls(), key) if text == "auto" else text
    if text not in CHOICES[dotted]:
        raise ConfigError(f"{dotted}={value!r}: choose one of {', '.join(CHOICES[dotted])} or auto")
    return text


def _build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    built = cls(**{k: _field_value(cls, where, k, v, where) for k, v in values.items()})
    check_ranges(where, built)
    return built


def _sniff(path: Path) -> str | None:
    """:func:`~detkit.data.sniff.sniff_data_file`, its YAML errors as :class:`ConfigError`."""
    try:
        return sniff_data_file(path)
    except YamlError as e:
        raise ConfigError(f"{e.where}: invalid YAML: {e.problem}") from None


def data_file_section(path: Path) -> dict[str, Any] | None:
    """The data section that reads a dataset *file* (a COCO json: images found around it, the
    val json beside it or itself; an Ultralytics data.yaml), or None for a data config."""
    kind = _sniff(path)
    if kind == "yolo":
        return {"format": "yolo", "root": str(path.parent), "yolo_yaml": path.name}
    if kind != "coco":
        return None
    root = path.parent.parent if path.parent.name == "annotations" else path.parent
    val = val_json_for(path) or path
    if val != path:
        logger.info("val split: %s (found next to %s)", val, path.name)
    anns = {"train_ann": _relative(path, root), "val_ann": _relative(val, root)}
    return {"format": "coco", "root": str(root), **anns, "train_images": "", "val_images": ""}


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def data_folder_hint(path: Path) -> str:
    """What to pass instead of a dataset *folder* given as ``data=``: its data files."""
    jsons = sorted(path.glob("annotations/*.json")) + sorted(path.glob("*.json"))
    found = sorted(path.glob("*.yaml")) + ([j for j in jsons if "train" in j.name] or jsons)
    if files := [f for f in found if _sniff(f) in ("coco", "yolo")][:3]:
        return f"pass a data file inside it, e.g. {' or '.join(f'data={f}' for f in files)}"
    return (
        "pass a COCO json or an Ultralytics data.yaml (data=FILE), or a format and the folder "
        f"(data=coco|voc|yolo root={path})"
    )


def _section_values(section: str, value: object, where: str) -> dict[str, Any]:
    """A section given as a mapping, or as the name of a file under configs/<section>/ (for
    ``data``, also a COCO json or an Ultralytics data.yaml: :func:`data_file_section`)."""
    if isinstance(value, str):
        path = Path(value).expanduser()
        if section == "data" and (found := data_file_section(path)):
            return found
        try:
            file = resolve_file(value, section)
        except ConfigError:
            if section == "data" and path.is_dir():  # not "not found": say what to pass
                raise ConfigError(f"data={value} is a folder: {data_folder_hint(path)}") from None
            raise
        return _read_yaml(file)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: section {section!r} must be a mapping or a file name")
    return value


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if raw == "":
        return key, ""
    try:
        value = load_yaml(raw, f"override {item!r}")
    except YamlError as e:
        if "duplicate key" in str(e):
            raise ConfigError(str(e)) from None
        value = raw
    return key, value


def _field_owner(key: str) -> str:
    """The section of a bare override key; it must be unique across sections."""
    owners = [s for s, cls in _SECTION_TYPES.items() if key in {f.name for f in fields(cls)}]
    if len(owners) == 1:
        return owners[0]
    if not owners:
        raise _unknown_key(key, "", {f.name for c in _SECTION_TYPES.values() for f in fields(c)})
    raise ConfigError(
        f"key {key!r} is ambiguous; write one of {', '.join(f'{o}.{key}' for o in owners)}"
    )


def all_keys() -> list[tuple[str, Any, str]]:
    """``(section.key, default, type)`` of every field, in section order (``--keys``)."""
    rows = []
    for section, cls in _SECTION_TYPES.items():
        hints, default = typing.get_type_hints(cls), cls()
        for f in fields(cls):
            tp = hints[f.name]
            name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            rows.append((f"{section}.{f.name}", getattr(default, f.name), name))
    return rows


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    model: dict[str, Any] | None = None,
) -> Config:
    """A :class:`Config` from an experiment file (None: ``configs/default.yaml``), ``key=value``
    overrides and a ``model`` section in place of the file's (a ``weights=`` checkpoint's).
    ConfigError: a missing file, an unknown key, a wrong type or a value out of range.

    Example:
        >>> cfg = load_config(overrides=["epochs=3", "eval.conf=0.25"])
        >>> cfg.train.epochs, cfg.eval.conf
        (3, 0.25)
    """
    file = resolve_file(str(path)) if path is not None else CONFIG_DIR / "default.yaml"
    raw = _read_yaml(file)  # a missing default is an error, never silent defaults
    if unknown := [key for key in raw if key not in _SECTION_TYPES]:
        raise ConfigError(
            f"{file}: unknown section {unknown[0]!r}; valid: {', '.join(_SECTION_TYPES)}"
        )
    sections = {s: _section_values(s, raw.get(s, {}), str(file)) for s in _SECTION_TYPES}
    spelled = {f"{s}.{k}" for s in _SECTION_TYPES if isinstance(raw.get(s), dict) for k in raw[s]}
    if model is not None:
        sections["model"] = dict(model)
    spelled = {f"model.{MOVED_KEYS[k]}" if k in MOVED_KEYS else k for k in spelled}
    return _resolve(sections, overrides or [], spelled, where=str(file))


def section_from_dict(section: str, d: dict[str, Any]) -> Any:
    """One section's dataclass from a dict (a checkpoint's deploy ``model``), validated."""
    sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}, section: dict(d)}
    _move_loss_keys(sections, SAVED)
    return _build_section(_SECTION_TYPES[section], sections[section], section)


def config_from_dict(d: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """A :class:`Config` from :meth:`Config.to_dict` output (a checkpoint's) and overrides; its
    values are resolved already, so ``train.weights`` brings no fine-tuning recipe."""
    sections = {s: dict(d.get(s, {})) for s in _SECTION_TYPES}
    return _resolve(sections, overrides or [], finetune=False, where=SAVED)


def _apply_recipe(sections: dict[str, dict[str, Any]], finetune: bool = True) -> RecipeNote | None:
    """Put the model's recipe (``recipe: NAME``; with ``train.weights`` and ``finetune``, the
    fine-tuning one) under the ``data``/``train`` values set so far, in place; its note or None."""
    name = sections["model"].pop("recipe", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"model.recipe: expected the name of a recipe file, got {name!r}")
    instead_of = ""
    if finetune and sections["train"].get("weights"):
        name, instead_of = FINETUNE_RECIPE, name or ""
    if name is None:
        return None
    path = resolve_file(name, "recipes")
    values, replaced = {}, {}
    for section, entries in _read_yaml(path).items():
        if section not in RECIPE_SECTIONS or not isinstance(entries, dict):
            raise ConfigError(
                f"{path}: a recipe holds mappings for {' and '.join(RECIPE_SECTIONS)}, got {section!r}"
            )
        for key, value in entries.items():
            _field_value(_SECTION_TYPES[section], section, key, value, f"{path}: {section}")
            values[f"{section}.{key}"] = value
            if key in sections[section] and sections[section][key] != value:
                replaced[f"{section}.{key}"] = sections[section][key]
        sections[section] = {**entries, **sections[section]}
    shown = path.relative_to(CONFIG_DIR.parent) if path.is_relative_to(CONFIG_DIR) else path
    return RecipeNote(name, str(shown), values, replaced, instead_of)


def _move_loss_keys(sections: dict[str, dict[str, Any]], where: str) -> None:
    """Translate an older config's loss keys into the model section, in place:
    ``model.loss_weights: [b, o, c]``, ``box_beta: null`` (unset) and :data:`MOVED_KEYS`, whose
    value at the default yields to the model's; any other disagreement is a ConfigError."""
    model, train, said = sections["model"], sections["train"], []
    if weights := model.pop("loss_weights", None):
        if not isinstance(weights, list | tuple) or len(weights) != 3:
            raise ConfigError(f"{where}: model.loss_weights={weights!r}: expected [box, obj, cls]")
        model.update(zip(("box_weight", "obj_weight", "cls_weight"), weights, strict=True))
        said.append("model.loss_weights")
    if "box_beta" in model and model["box_beta"] is None:
        del model["box_beta"]
    for old, new in MOVED_KEYS.items():
        if old.split(".")[1] not in train:
            continue
        value = train.pop(old.split(".")[1])
        said.append(old)
        if new not in model:
            model[new] = value
        elif model[new] != value and value != getattr(ModelConfig(), new):
            raise ConfigError(f"{where}: {old}={value!r} contradicts model.{new}={model[new]!r}; "
                              f"set model.{new} only")  # fmt: skip
    if said:  # a saved config's values are reproduced exactly: nothing for the user to do
        (logger.debug if where == SAVED else logger.info)("%s: %s read as the model's box_weight, obj_weight, cls_weight and box_beta",
                    where, ", ".join(said))  # fmt: skip


def swap_data(current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The data section after ``data=X`` (``new``: X's values): when X sets ``format``, every
    key that locates a dataset takes X's value or its default; the others keep theirs.

    Example:
        >>> swap_data({"format": "voc", "root": "/v", "voc_val": ["a"], "mosaic": 1.0},
        ...           {"format": "coco", "train_ann": "t.json"})
        {'mosaic': 1.0, 'format': 'coco', 'train_ann': 't.json'}
    """
    if "format" not in new:
        return current | new
    reset = {"format", "root", "class_names"}.union(*_FORMAT_KEYS.values())
    return {k: v for k, v in current.items() if k not in reset} | new


def override_key(item: str, note: bool = True) -> tuple[str, str, Any]:
    """``(section, field, value)`` of a ``key=value`` override, Ultralytics' names translated
    (logged with ``note``); ``section`` is ``""`` for ``data=X`` / ``model=X``. ConfigError:
    not ``key=value``, an unknown or ambiguous key, an unknown section."""
    key, value = _parse_override(item)
    say = logger.info if note else logger.debug
    if key == "model" and str(value).lower().endswith(WEIGHTS_SUFFIXES):
        return "train", "weights", value  # Ultralytics' `model=best.pt`: start from those weights
    if key in ("data", "model"):
        return "", key, value
    section, _, name = key.rpartition(".")
    if name in ALIASES:
        say("%s= is %s= in detkit (used as such)", name, ALIASES[name])
        name = ALIASES[name]
    elif name in VALUE_ALIASES:
        real, translate = VALUE_ALIASES[name]
        value = translate(value)
        say("%s=%s is %s=%s in detkit (used as such)", name, item.split("=", 1)[1], real, value)
        name = real
    moved = MOVED_KEYS.get(f"{section or 'train'}.{name}")
    if moved and (section or name != moved):
        say("%s= is model.%s= (the loss weights are the model's; used as such)", key, moved)
    if moved or name == "loss_weights":
        section, name = "model", moved or name
    if not section:
        section = _field_owner(name)
    if section not in _SECTION_TYPES:
        raise ConfigError(f"override {item!r}: unknown section {section!r}")
    return section, name, value


def check_overrides(overrides: list[str]) -> list[str]:
    """The dotted keys that ``overrides`` set (``data``/``model`` for a section swap), names,
    types and choices checked (ConfigError; a section file not found too) without building a
    config: cheap, before anything heavy is imported."""
    keys = []
    for item in overrides:
        section, name, value = override_key(item, note=False)
        if not section:
            _section_values(name, str(value), f"override {item!r}")
            keys.append(name)
            continue
        if name == "loss_weights":  # an older key for three model keys
            moved = {"model": {name: value}, "train": {}}
            _move_loss_keys(moved, f"override {item!r}")
            for k, v in moved["model"].items():
                _check_type(v, float, f"model.{k}")
                keys.append(f"model.{k}")
            continue
        _field_value(_SECTION_TYPES[section], section, name, value, f"override {item!r}")
        keys.append(f"{section}.{name}")
    return keys


def _resolve(
    sections: dict[str, dict[str, Any]],
    overrides: list[str],
    spelled: set[str] | None = None,
    finetune: bool = True,
    where: str = "config",
) -> Config:
    """Overrides (section swaps first, whatever their order), then the recipe under them, into
    a :class:`Config`; the keys set and ``spelled`` must do something (:func:`check_applies`)."""
    _move_loss_keys(sections, where)
    named: set[str] = set()
    parsed = [(item, *override_key(item)) for item in overrides]
    for item, section, name, value in parsed:
        if section:
            continue
        found = _section_values(name, str(value), f"override {item!r}")
        if name == "model":  # a model file of the older kind
            _move_loss_keys({"model": found, "train": {}}, str(value))
        sections[name] = swap_data(sections["data"], found) if name == "data" else found
    for _, section, name, value in parsed:
        if section:
            sections[section] = {**sections[section], name: value}
            named.add(f"{section}.{name}")
    _move_loss_keys(sections, "overrides")  # loss_weights=[b, o, c]
    root = str(sections["data"].get("root", ""))
    if root and (found := data_file_section(Path(root).expanduser())):  # data.root=x.json
        # the file's keys, but those the user named win (convert x.json train_images=...)
        sections["data"] = sections["data"] | {
            k: v for k, v in found.items() if k == "root" or f"data.{k}" not in named
        }
    sections = {s: dict(v) for s, v in sections.items()}  # the recipe must not touch the caller's
    note = _apply_recipe(sections, finetune)
    built = {s: _build_section(cls, sections[s], s) for s, cls in _SECTION_TYPES.items()}
    cfg = Config(**built, recipe=note)
    named |= set(spelled or ())
    if cfg.train.weights:  # the model may become the checkpoint's: api.train_config checks it
        named = {k for k in named if not k.startswith("model.")}
    check_applies(cfg, named)
    return cfg


def _model_idle(m: ModelConfig) -> dict[str, str]:
    """Model keys that do nothing for ``m``'s architecture (:class:`For`) and losses, and why."""
    hints, out = typing.get_type_hints(ModelConfig, include_extras=True), {}
    for f in fields(m):
        only = field_mark(hints[f.name], For)
        if only is not None and m.arch not in only.archs:
            out[f"model.{f.name}"] = only.why.format(arch=m.arch)
    if "focal" not in (m.cls_loss, m.obj_loss) or m.arch == "ssd":
        out["model.focal_gamma"] = "used by the focal losses only (cls_loss or obj_loss=focal)"
    if m.obj_loss != "focal" or m.arch == "ssd":
        out["model.focal_alpha"] = "used by obj_loss=focal only"
    if m.cls_loss == "hinge" and m.arch != "ssd":
        out["model.label_smoothing"] = "not used by cls_loss=hinge"
    if m.box_loss != "smooth_l1":
        out["model.box_beta"] = f"the smooth L1 beta, and box_loss is {m.box_loss}"
    return out


def idle_keys(cfg: Config) -> dict[str, str]:
    """Every key that does nothing under ``cfg`` (another model's or format's, a part switched
    off), with why: setting one is an error, never a silent no-op."""
    t, d = cfg.train, cfg.data
    out = _model_idle(cfg.model)
    for fmt, keys in _FORMAT_KEYS.items():
        for k in keys:
            if k not in _FORMAT_KEYS.get(d.format, ()):
                out.setdefault(f"data.{k}", f"a {fmt} setting, and data.format is {d.format}")
    if d.mosaic == 0:
        out["data.close_mosaic"] = "mosaic is 0: there is no mosaic to close"
    if t.optimizer != "sgd":
        out["train.nesterov"] = f"an SGD setting, and the optimizer is {t.optimizer}"
    if not t.val:
        why = "val=false validates once, after the last epoch"
        out |= {"train.eval_every": why, "train.patience": why + " (no early stopping)"}
    return out


def check_applies(cfg: Config, named: set[str] | list[str]) -> None:
    """Refuse (ConfigError, each with why) keys the user set that would do nothing under
    ``cfg`` (:func:`idle_keys`); a key at its default changes nothing anywhere: allowed."""
    idle = idle_keys(cfg)
    built, default = flatten(cfg.to_dict()), flatten(Config().to_dict())
    found = [
        f"{k}: {idle[k]}" for k in sorted(named) if k in idle and built.get(k) != default.get(k)
    ]
    refuse_idle(found, "here")


def refuse_idle(found: list[str], where: str) -> None:
    """Raise a :class:`ConfigError` naming each ``"key: why"`` that does nothing ``where``."""
    if len(found) == 1:
        raise ConfigError(f"{found[0].replace(':', f' does nothing {where}:', 1)}; leave it out")
    if found:
        raise ConfigError(f"these keys do nothing {where}: {'; '.join(found)}; leave them out")


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically (a crash leaves the old file or the new)."""
    from detkit.core.io import write_text  # it imports numpy; `detkit --help` must not

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "RecipeNote",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "save_config",
]
