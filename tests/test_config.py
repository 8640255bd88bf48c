"""Config: YAML + overrides into dataclasses; clear errors for unknown keys and wrong types."""

from __future__ import annotations

import re
import typing
from dataclasses import fields

import pytest
import torch

from detkit.config import (
    _SECTION_TYPES,
    CONFIG_DIR,
    ConfigError,
    config_from_dict,
    field_mark,
    load_config,
    save_config,
)
from detkit.engine.device import select_device


def test_default_config_loads_named_sections():
    cfg = load_config()
    assert cfg.data.format == "shapes"
    assert cfg.model.strides == [8, 16, 32]
    assert len(cfg.model.anchors) == len(cfg.model.strides)


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [
        ("epochs=3", "train", "epochs", 3),
        ("train.lr=1e-3", "train", "lr", 1e-3),
        ("lr=2", "train", "lr", 2.0),
        ("amp=false", "train", "amp", False),
        ("eval.conf=0.25", "eval", "conf", 0.25),
        ("root=/data/x", "data", "root", "/data/x"),
        ("model.widths=[8,16,32,64,128]", "model", "widths", [8, 16, 32, 64, 128]),
    ],
)
def test_overrides(override, section, key, value):
    cfg = load_config(overrides=[override])
    assert getattr(getattr(cfg, section), key) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochz=3", "unknown key 'epochz'"),
        ("train.nope=1", "unknown key 'nope'"),
        ("epochs=abc", "train.epochs: expected int"),
        ("amp=3", "train.amp: expected bool"),
        ("data=does_not_exist", "not found"),
        ("epochs", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_an_unknown_key_with_nothing_close_points_at_the_key_list_not_a_dump():
    with pytest.raises(ConfigError, match=r"no key is close; `detkit train --keys`") as err:
        load_config(overrides=["train.zzz=1"])
    assert "epochs" not in str(err.value) and len(str(err.value)) < 120


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("img_siz=320", "unknown key 'img_siz'; did you mean 'img_size'?"),
        ("train.epochz=1", "did you mean 'epochs'?"),
        ("wieght_decay=0.1", "did you mean 'weight_decay'?"),
    ],
)
def test_unknown_key_says_did_you_mean_without_a_dump(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(overrides=[override])
    assert "valid keys" not in str(err.value) and len(str(err.value)) < 120


def test_a_yaml_file_with_a_typo_says_did_you_mean(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  imgsz: 320\n")
    with pytest.raises(ConfigError, match="unknown key 'imgsz'; did you mean 'img_size'"):
        load_config(exp)


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [
        ("imgsz=320", "train", "img_size", 320),
        ("lr0=0.01", "train", "lr", 0.01),
        ("lrf=0.1", "train", "final_lr_ratio", 0.1),
        ("fliplr=0.0", "train", "hflip", 0.0),
        ("train.imgsz=64", "train", "img_size", 64),
        ("device=0", "train", "device", "0"),
        ("conf=0.5", "eval", "conf", 0.5),
        ("iou=0.7", "eval", "iou", 0.7),
    ],
)
def test_ultralytics_names_are_accepted(override, section, key, value):
    assert getattr(getattr(load_config(overrides=[override]), section), key) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=-1", "train.epochs=-1 is out of range: valid [1, inf)"),
        ("epochs=0", "train.epochs=0 is out of range"),
        ("img_size=0", "train.img_size=0 is out of range: valid [32, inf)"),
        ("mosaic=2.0", "data.mosaic=2.0 is out of range: valid [0, 1]"),
        ("conf=1.5", "eval.conf=1.5 is out of range: valid [0, 1]"),
        ("lr=0", "train.lr=0.0 is out of range: valid (0, inf)"),
        ("lr=.nan", "train.lr=nan is out of range"),
        ("momentum=1.0", "train.momentum=1.0 is out of range: valid [0, 1)"),
        ("aug_scale=[0.5,-1]", "data.aug_scale=[0.5, -1.0] is out of range: valid (0, inf)"),
        ("batch=0", "train.batch=0 is out of range"),
        ("max_det=0", "eval.max_det=0 is out of range"),
    ],
)
def test_numbers_out_of_range_name_the_field_and_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=[override])


def test_every_numeric_field_has_a_range():
    numeric, ranged = [], []
    for section, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in fields(cls):
            if re.search(r"\b(int|float)\b", str(typing.get_type_hints(cls)[f.name])):
                numeric.append(f"{section}.{f.name}")
            if field_mark(hints[f.name]) is not None:
                ranged.append(f"{section}.{f.name}")
    assert len(numeric) > 60
    assert [k for k in numeric if k not in ranged] == []
    assert [k for k in ranged if k not in numeric] == []


def test_device_names_and_indices():
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu' is not a device; use cpu, cuda, cuda:N or N"):
        select_device("gpu")
    with pytest.raises(ValueError, match="torchrun"):
        select_device("0,1")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0' requested but CUDA is not available"):
            select_device("0")


def test_experiment_file_and_round_trip(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("data: shapes\nmodel: yolo_tiny\ntrain:\n  epochs: 7\n")
    cfg = load_config(exp, ["batch=4"])
    assert (cfg.train.epochs, cfg.train.batch) == (7, 4)
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_config(unknown)


def test_configs_are_package_data_so_a_wheel_ships_them():
    """Every shipped YAML lies inside the package and matches pyproject's package-data globs."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    import detkit
    from detkit.config import CONFIG_DIR

    package = Path(detkit.__file__).resolve().parent
    assert CONFIG_DIR.resolve().is_relative_to(package)
    root = package.parent / "pyproject.toml"
    globs = tomllib.loads(root.read_text())["tool"]["setuptools"]["package-data"]["detkit"]
    files = [p.relative_to(package).as_posix() for p in CONFIG_DIR.rglob("*.yaml")]
    assert len(files) >= 10
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files)


# -- the model recipe (#20: the recipe is the default) ------------------------------------------
@pytest.mark.parametrize("model", ["yolo_n", "yolo_s", "yolo_m"])
def test_naming_a_yolo_model_gives_its_recipe_without_overrides(model):
    cfg = load_config(overrides=[f"model={model}"])
    assert (cfg.train.batch, cfg.data.mosaic, cfg.data.close_mosaic) == (16, 1.0, 5)
    assert cfg.recipe.name == "yolo" and cfg.recipe.replaced == {}
    assert cfg.recipe.line() == (
        "recipe 'yolo' (configs/recipes/yolo.yaml): mosaic=1.0 close_mosaic=5 batch=16"
    )
    assert "recipe" not in cfg.to_dict()["model"]  # resolved values, not a pointer, are saved
    assert config_from_dict(cfg.to_dict()) == cfg


def test_the_default_experiment_has_no_recipe():
    cfg = load_config()  # yolo_tiny: what make demo trains
    assert (cfg.train.batch, cfg.data.mosaic, cfg.data.close_mosaic, cfg.recipe) == (
        32,
        0.0,
        0,
        None,
    )


@pytest.mark.parametrize("order", [["batch=8", "model=yolo_n"], ["model=yolo_n", "batch=8"]])
def test_anything_set_wins_over_the_recipe_and_is_named(order):
    cfg = load_config(overrides=order)
    assert (cfg.train.batch, cfg.data.mosaic) == (8, 1.0)
    assert cfg.recipe.replaced == {"train.batch": 8}
    assert cfg.recipe.line().endswith(
        "mosaic=1.0 close_mosaic=5; set by your config or command line instead: batch=8 (recipe 16)"
    )


def test_an_experiment_file_and_a_data_file_win_over_the_recipe(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("data: coco\nmodel: yolo_n\ntrain:\n  batch: 24\n")
    cfg = load_config(exp)
    assert (cfg.train.batch, cfg.data.close_mosaic) == (24, 10)  # coco.yaml says 10
    assert cfg.recipe.replaced == {"train.batch": 24, "data.close_mosaic": 10}


def test_a_bad_recipe_names_its_file_and_key(tmp_path):
    model = tmp_path / "m.yaml"
    recipe = tmp_path / "r.yaml"
    model.write_text(f"arch: yolo\nrecipe: {recipe}\n")
    recipe.write_text("train:\n  bacth: 16\n")
    with pytest.raises(
        ConfigError, match=r"r\.yaml: train: unknown key 'bacth'; did you mean 'batch'"
    ):
        load_config(overrides=[f"model={model}"])
    recipe.write_text("model:\n  head_width: 16\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: a recipe holds mappings for data and train"):
        load_config(overrides=[f"model={model}"])


# -- issue 22: Ultralytics' habits, and no key that silently does nothing --------------------
@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("val=False", "train.val", False),
        ("fraction=0.25", "data.fraction", 0.25),
        ("exist_ok=True", "train.exist_ok", True),
        ("batch=-1", "train.batch", -1),
        ("optimizer=SGD", "train.optimizer", "sgd"),
        ("optimizer=Adam", "train.optimizer", "adam"),
        ("optimizer=AdamW", "train.optimizer", "adamw"),
        ("optimizer=auto", "train.optimizer", "adamw"),
        ("cos_lr=True", "train.schedule", "cosine"),
        ("cos_lr=False", "train.schedule", "linear"),
        ("box=7.5", "model.box_weight", 7.5),
        ("cls=0.5", "model.cls_weight", 0.5),
        ("cache=ram", "data.cache_images", True),
        ("cache=True", "data.cache_images", True),
        ("cache=False", "data.cache_images", False),
        ("scale=0.5", "data.aug_scale", [0.5, 1.5]),
        ("verbose=False", "train.quiet", True),
    ],
)
def test_more_ultralytics_names_mean_the_same(override, key, value):
    section, name = key.split(".")
    assert getattr(getattr(load_config(overrides=[override]), section), name) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("imgsze=320", "unknown key 'imgsze'; did you mean 'img_size'?"),  # the alias' key
        ("cos=1", "did you mean 'cos_lr'?"),  # not 'cls_loss'
        ("warmup=3", "did you mean 'warmup_epochs'?"),
        ("hsv=3", "did you mean 'hsv_h', 'hsv_s' or 'hsv_v'?"),
        ("dfl=1.5", "unknown key 'dfl': detkit's losses have no distribution focal loss"),
        ("cache=disk", "cache=disk: detkit caches images in RAM only"),
        ("optimizer=lion", "train.optimizer='lion': choose one of sgd, adam, adamw or auto"),
        ("batch=-2", "train.batch=-2 is out of range: valid [1, inf) or -1 (automatic)"),
        ("resume=True", "resume is not a setting: detkit train --resume"),
        ("fraction=0", "data.fraction=0.0 is out of range"),
    ],
)
def test_ultralytics_habits_without_a_counterpart_say_what_to_do(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(overrides=[override])
    assert str(err.value).count("'") <= 10  # at most five candidates, never a key dump


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=ssd300", "assigner=neighbors"], "model.assigner does nothing here: a grid-model"),
        (["model=yolo_n", "neck_width=16"], "model.neck_width does nothing here"),
        (["model=yolo_tiny", "head_width=64"], "model.head_width does nothing here: a yolo_csp"),
        (["model=yolo_n", "focal_gamma=1.0"], "model.focal_gamma does nothing here"),
        (["model=yolo_n", "box_beta=0.5"], "model.box_beta does nothing here"),
        (["nesterov=false"], "train.nesterov does nothing here: an SGD setting"),
        (["close_mosaic=2"], "data.close_mosaic does nothing here: mosaic is 0"),
        (["val=false", "patience=3"], "train.patience does nothing here: val=false"),
        (["voc_train=[a]"], "data.voc_train does nothing here: a voc setting"),
        (["data=voc", "root=/v", "train_ann=x.json"], "data.train_ann does nothing here"),
        (["model=ssd300", "auto_anchors=3"], "model.auto_anchors does nothing here"),
        (["model=yolo_tiny", "block=c2f"], "model.block does nothing here: a yolo_csp"),
        (["model=yolo_n", "lite=true"], "model.lite does nothing here: an SSD setting"),
    ],
)
def test_a_key_that_would_do_nothing_is_refused_naming_why(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=SGD", "nesterov=false"],
        ["mosaic=1.0", "close_mosaic=2"],
        ["model=yolo_n", "cls_loss=focal", "focal_gamma=1.5"],
        ["model=ssd300", "loss_weights=[2,1,1]", "match_iou=0.4"],
        ["model=ssd300", "box=7.5"],
        ["val=false", "epochs=3"],
    ],
)
def test_keys_that_apply_are_accepted(overrides):
    load_config(overrides=overrides)


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml")))
@pytest.mark.parametrize("data", sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")))
def test_every_shipped_model_and_data_config_combine_and_round_trip(model, data, tmp_path):
    cfg = load_config(overrides=[f"model={model}", f"data={data}", "root=/data/x"])
    save_config(cfg, tmp_path / "config.yaml")  # a run's config.yaml, used again as --config
    assert load_config(tmp_path / "config.yaml") == cfg


def test_data_swap_replaces_the_dataset_and_keeps_the_rest(tiny_shapes):
    """``data=X`` changes the dataset keys only, in any order: the augmentation a run or the
    command set survives it (a resume's ``data=X`` used to reset mosaic 1.0 to 0.0)."""
    json_file = tiny_shapes / "annotations" / "instances_train.json"
    for overrides in (["mosaic=1.0", f"data={json_file}"], [f"data={json_file}", "mosaic=1.0"]):
        assert load_config(overrides=overrides).data.mosaic == 1.0
    run = load_config(overrides=["data=coco", "root=/data/coco", "mosaic=0.5", "hsv_v=5"])
    resumed = config_from_dict(run.to_dict(), [f"data={json_file}"])  # what --resume does
    assert (resumed.data.mosaic, resumed.data.hsv_v) == (0.5, 5.0)
    assert (resumed.data.format, resumed.data.root) == ("coco", str(tiny_shapes))
    assert resumed.data.train_ann == "annotations/instances_train.json"
    back = config_from_dict(run.to_dict(), ["data=shapes"])  # root is the dataset's: reset
    assert (back.data.format, back.data.root, back.data.mosaic) == ("shapes", "", 0.5)
    assert back.data.train_ann == "annotations/instances_train.json"


def test_older_loss_keys_load_as_the_models(tmp_path):
    """A checkpoint's config of the older schema (train.*_weight, model.loss_weights) loads
    to the same loss, and resuming it reports no change."""
    old = config_from_dict({}).to_dict()
    for k in ("box_weight", "obj_weight", "cls_weight", "box_beta"):
        del old["model"][k]
    ssd = {**old["model"], "arch": "ssd", "loss_weights": [1.0, 1.0, 1.0], "box_beta": None}
    old["train"] |= {"box_weight": 5.0, "obj_weight": 1.0, "cls_weight": 1.0, "smooth_l1_beta": 0.1}
    grid = config_from_dict(
        {**old, "model": {**old["model"], "loss_weights": [], "box_beta": None}}
    )
    assert grid == config_from_dict({})
    m = config_from_dict({**old, "model": ssd}).model
    assert (m.box_weight, m.obj_weight, m.cls_weight, m.box_beta) == (1.0, 1.0, 1.0, 0.1)
    assert config_from_dict({**old, "model": ssd}, ["train.box_weight=2"]).model.box_weight == 2
    assert load_config(overrides=["smooth_l1_beta=0.3"]).model.box_beta == 0.3
    (tmp_path / "m.yaml").write_text("arch: ssd\nbackbone: mobilenetv2\nloss_weights: [1, 2, 3]\n")
    m = load_config(overrides=[f"model={tmp_path / 'm.yaml'}", "box=9"]).model
    assert (m.box_weight, m.obj_weight, m.cls_weight) == (9, 2, 3)  # the command line wins
    with pytest.raises(ConfigError, match=r"train.box_weight=2.0 contradicts model.box_weight=1.0"):
        config_from_dict({**old, "model": ssd, "train": {"box_weight": 2.0}})
