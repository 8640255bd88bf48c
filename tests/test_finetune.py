"""Starting from weights (issue 19): a trained detector on new classes, freezing, the
architecture check, ``model=best.pt``, and backbone weights for every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detkit.api import train_config
from detkit.config import load_config
from detkit.config.build import build_model, deploy_record, initial_weights
from detkit.models.checkpoint import CheckpointError, save_checkpoint
from detkit.models.transfer import ClassRows, freeze, freeze_units, transfer_weights

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = ["circle", "square", "triangle", "star", "hexagon"]
TARGET = ["star", "pentagon", "circle"]  # star and circle shared, in another order; one new
SMALL = {  # small enough to build in milliseconds
    "yolo_tiny": ["widths=[8,8,16,16,16]", "neck_width=16"],
    "yolo_n": ["width_mult=0.125", "head_width=16"],
    "ssdlite320": ["width_mult=0.25"],
}


def _cfg(name: str, *more: str):
    return load_config(overrides=[f"model={name}", *SMALL.get(name, []), *more])


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float tensor random, so a tensor loaded from elsewhere cannot match by chance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def _trained_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with statistics and affine parameters as training leaves them (the
    constructor's weights otherwise, so that deep backbones stay finite)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _checkpoint(path: Path, cfg, names: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint as the trainer writes it (config, deploy record, model and EMA weights);
    returns the EMA weights it holds."""
    model = _randomised(build_model(cfg.model, len(names)), seed)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(
        {"model": _randomised(model, seed + 1).state_dict(), "ema": ema, "config": cfg.to_dict(),
         "class_names": names, "epoch": 3, "deploy": deploy_record(cfg, names, None).to_dict()},
        path,
    )  # fmt: skip
    return ema


@pytest.mark.parametrize("name", ["yolo_tiny", "yolo_n", "ssdlite320"])
def test_shared_classes_are_carried_by_name_and_new_ones_start_fresh(tmp_path, name):
    cfg = _cfg(name)
    ema = _checkpoint(tmp_path / "src.pt", cfg, SOURCE)
    torch.manual_seed(1)
    model = build_model(cfg.model, len(TARGET))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    text = initial_weights(model, load_config(overrides=[f"weights={tmp_path / 'src.pt'}"]).train,
                           TARGET)  # fmt: skip
    assert "carried by name (2): star, circle" in text and "new, initialised (1): pentagon" in text
    layers = model.class_rows()
    assert layers  # every family names its per-class layers
    got = model.state_dict()
    for key, value in got.items():
        module = key.rpartition(".")[0]
        if module not in layers:
            assert torch.equal(value, ema[key]), key  # everything else loaded as is (EMA)
            continue
        rows = layers[module]
        k_src = rows.size - len(TARGET) + len(SOURCE)
        for g in range(rows.groups):
            a, b = g * rows.size, g * k_src
            for j in range(rows.first):  # box / confidence / background rows by position
                assert torch.equal(value[a + j], ema[key][b + j]), key
            for dst, cls in enumerate(TARGET):
                row = value[a + rows.first + dst]
                if cls in SOURCE:  # the trained row of the class of the same name, exactly
                    assert torch.equal(row, ema[key][b + rows.first + SOURCE.index(cls)]), key
                else:  # a new class keeps the fresh initialisation
                    assert torch.equal(row, fresh[key][a + rows.first + dst]), key


def test_class_rows_pairs_by_hand():
    # 2 anchors of (x, y, w, h, obj, 3 classes) from a checkpoint of 2 classes; class 1 <- 0
    rows = ClassRows(groups=2, size=8, first=5)
    dst, src = rows.pairs(3, 2, [(0, 1)])
    assert dst == [0, 1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 14]
    assert src == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]


def test_same_classes_load_everything_exactly(tmp_path):
    cfg = _cfg("yolo_n")
    ema = _checkpoint(tmp_path / "src.pt", cfg, SOURCE)
    model = build_model(cfg.model, len(SOURCE))
    initial_weights(model, load_config(overrides=[f"weights={tmp_path / 'src.pt'}"]).train, SOURCE)
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_another_architecture_or_size_is_refused_in_one_line(tmp_path):
    _checkpoint(tmp_path / "n.pt", _cfg("yolo_n"), SOURCE)
    with pytest.raises(ValueError, match=r"width_mult 0\.125 there, 0\.5 here") as e:
        train_config(None, [f"weights={tmp_path / 'n.pt'}", "model=yolo_s"], {})
    assert "\n" not in str(e.value) and "arch '" not in str(e.value)  # same arch, other size
    with pytest.raises(ValueError, match="arch 'yolo_csp' there, 'ssd' here"):
        train_config(None, [f"model={tmp_path / 'n.pt'}", "model=ssdlite320"], {})
    with pytest.raises(ValueError, match=r"head_width 16 there, 32 here"):
        train_config(None, [f"weights={tmp_path / 'n.pt'}", "head_width=32"], {})
    torch.save(build_model(_cfg("yolo_n").model, 3).backbone.state_dict(), tmp_path / "bb.pt")
    with pytest.raises(CheckpointError, match="goes in backbone_weights="):
        train_config(None, [f"weights={tmp_path / 'bb.pt'}"], {})


def test_weights_bring_their_model_unless_the_config_names_one(tmp_path):
    n_cfg = _cfg("yolo_n", "obj_iou=0.5")
    _checkpoint(tmp_path / "n.pt", n_cfg, SOURCE)
    for key in ("weights", "model"):  # Ultralytics' model=best.pt means the same
        cfg, ckpt = train_config(None, [f"{key}={tmp_path / 'n.pt'}", "obj_iou=0.25"],
                                 {"epochs": 2})  # fmt: skip
        assert ckpt["class_names"] == SOURCE  # read once, handed to the trainer
        assert cfg.train.weights == str(tmp_path / "n.pt") and cfg.train.epochs == 2
        assert cfg.model.arch == "yolo_csp" and cfg.model.width_mult == 0.125  # not yolo_tiny
        assert cfg.model.obj_iou == 0.25  # a model.<key> override applies on top
    exp = tmp_path / "exp.yaml"
    exp.write_text("model: yolo_tiny\n")  # an experiment that names its model is checked
    with pytest.raises(ValueError, match="arch 'yolo_csp' there, 'yolo' here"):
        train_config(exp, [f"weights={tmp_path / 'n.pt'}"], {})
    exp.write_text("train:\n  epochs: 3\n")  # one that does not, takes the checkpoint's
    assert train_config(exp, [f"weights={tmp_path / 'n.pt'}"], {})[0].model.arch == "yolo_csp"


def test_a_run_from_weights_takes_the_fine_tuning_recipe(tmp_path):
    from detkit.config import config_from_dict
    from detkit.config.build import train_options

    _checkpoint(tmp_path / "n.pt", _cfg("yolo_n"), SOURCE)
    recipe = {"data.mosaic": 1.0, "data.close_mosaic": 5, "train.batch": 16, "train.lr": 0.002,
              "train.warmup_epochs": 1.0}  # fmt: skip
    # the checkpoint's model section names no recipe: without this one, batch 32 and no mosaic
    cfg, _ = train_config(None, [f"weights={tmp_path / 'n.pt'}", "lr=0.003"], {})
    got = {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in recipe}
    assert got == recipe | {"train.lr": 0.003}  # what you set wins, and is named
    assert train_options(cfg, 1, None, 32).recipe == (
        "recipe 'finetune' (configs/recipes/finetune.yaml; weights= given): mosaic=1.0 "
        "close_mosaic=5 batch=16 warmup_epochs=1.0; set by your config or command line "
        "instead: lr=0.003 (recipe 0.002)"
    )
    named = load_config(overrides=["model=yolo_n", f"weights={tmp_path / 'n.pt'}"])
    assert named.recipe.instead_of == "yolo" and named.recipe.values == recipe
    assert "in place of the model's recipe 'yolo'" in named.recipe.line()
    assert load_config(overrides=["model=yolo_n"]).recipe.name == "yolo"  # without weights=
    # a resumed fine-tune rebuilds its saved values: no recipe, nothing replaced
    again = config_from_dict(cfg.to_dict())
    assert again.recipe is None and again == cfg


def test_freeze_backbone_neck_or_the_first_n_modules():
    def frozen(spec: str) -> set[str]:
        model = build_model(_cfg("yolo_n").model, 3)
        names, count = freeze(model, spec)
        off = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
        assert count == sum(p.numel() for p in model.parameters() if not p.requires_grad)
        return off, names

    assert frozen("backbone")[0] == {"backbone"}
    assert frozen("neck")[0] == {"backbone", "neck"}  # everything but the heads
    off, names = frozen("2")
    assert names == ["backbone.stem", "backbone.stages.0"] and off == {"backbone"}
    units = [n for n, _ in freeze_units(build_model(_cfg("yolo_n", "backbone=resnet18").model, 3))]
    assert units[:2] == ["backbone.conv1", "backbone.bn1"] and units[-1] == "adapt+neck"
    assert freeze(build_model(_cfg("yolo_n").model, 3), "") == ([], 0)
    for bad in ("head", "0", "99"):
        with pytest.raises(ValueError, match="backbone, neck, or a number from 1 to 6"):
            freeze(build_model(_cfg("yolo_n").model, 3), bad)


def test_a_report_lists_what_was_not_used(tmp_path):
    model = build_model(_cfg("yolo_n").model, 3)
    state = dict(model.state_dict())
    key = next(k for k in state if k.startswith("neck."))
    state[key] = torch.zeros(7)  # another shape: keeps its initialisation, and is named
    state["extra.weight"] = torch.zeros(1)
    report = transfer_weights(model, state, TARGET, TARGET, "x.pt")
    assert report.parts["neck"].fresh == 1 and report.parts["backbone"].fresh == 0
    assert f"{key} (7,)" in report.table() and "extra.weight" in report.table()


# -- backbone weights for every family -------------------------------------------------------
def test_torchvision_state_dict_loads_through_backbone_weights(tmp_path):
    from torchvision.models import get_model

    tv = _randomised(get_model("mobilenet_v3_large", weights=None), seed=3)
    path = tmp_path / "mnv3.pth"
    torch.save(tv.state_dict(), path)  # what torchvision's constructor gives, classifier too
    model = build_model(_cfg("yolo_n", "backbone=mobilenet_v3_large",
                              f"backbone_weights={path}").model, 3)  # fmt: skip
    mine = model.backbone.state_dict()
    assert mine and all(torch.equal(v, tv.state_dict()[k]) for k, v in mine.items())
    assert not any(k.startswith("classifier") for k in mine)
    torch.save(get_model("resnet18", weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="does not fit the mobilenet_v3_large backbone: missing"):
        build_model(_cfg("yolo_n", "backbone=mobilenet_v3_large",
                         f"backbone_weights={tmp_path / 'r18.pth'}").model, 3)  # fmt: skip


@pytest.mark.parametrize("name", ["yolo_tiny", "yolo_n"])
def test_grid_models_load_backbone_weights_from_a_checkpoint(tmp_path, name):
    """Issue 22 item 2: ``backbone_weights=best.pt`` on a YOLO model was silently ignored."""
    ema = _checkpoint(tmp_path / "best.pt", _cfg(name), SOURCE, seed=5)
    model = build_model(_cfg(name, f"backbone_weights={tmp_path / 'best.pt'}").model, 2)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, ema[f"backbone.{key}"]), key  # the EMA weights
    with pytest.raises(ValueError, match="does not fit"):
        build_model(_cfg("yolo_s", f"backbone_weights={tmp_path / 'best.pt'}").model, 2)


def test_pretrained_uses_torchvision_cache_and_says_how_to_do_without(tmp_path, monkeypatch):
    from torchvision.models import get_model

    from detkit.models.tv_backbone import pretrained_file

    def offline(url, dst, *args, **kwargs):
        raise OSError(f"offline, no {url}")  # no test reaches the network

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = _cfg("yolo_n", "backbone=resnet18", "pretrained=true")
    url, file = pretrained_file("resnet18")
    assert file.parent == tmp_path / "torch/hub/checkpoints" and file.name in url
    with pytest.raises(FileNotFoundError) as e:
        build_model(cfg.model, 3)
    message = str(e.value)
    assert str(file) in message and "backbone_weights=" in message and "\n" not in message
    tv = _randomised(get_model("resnet18", weights=None), seed=4)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tv.state_dict(), file)  # as if torchvision had downloaded it before
    model = build_model(cfg.model, 3)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match="torchvision has no ImageNet weights for the CSPDarknet"):
        build_model(_cfg("yolo_n", "pretrained=true").model, 3)


@pytest.mark.parametrize(
    "backbone",
    ["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"],
)
def test_torchvision_backbones_give_the_grid_and_fold(backbone):
    from detkit.models.fuse import fuse_conv_bn

    model = build_model(_cfg("yolo_n", f"backbone={backbone}").model, 3)
    assert model.backbone.out_channels and len(model.adapt) == 3
    _trained_bn(model).eval()
    for h, w in ((64, 64), (72, 100)):  # every stride's map is ceil(side / stride)
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            raw = model(x)
        assert raw.shape == (1, model.priors(h, w).shape[0], 5 + 3)
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), raw, rtol=1e-3, atol=1e-3)


# -- end to end -------------------------------------------------------------------------------
def _relabelled(tiny_shapes: Path, out: Path, names: list[str], mapping: dict[int, int]) -> Path:
    """``tiny_shapes``' COCO files with other categories: source category id -> new id
    (annotations of unmapped categories removed); returns a data.root holding them."""
    (out / "annotations").mkdir(parents=True)
    (out / "images").symlink_to(tiny_shapes / "images")
    for split in ("train", "val"):
        d = json.loads((tiny_shapes / f"annotations/instances_{split}.json").read_text())
        d["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        d["annotations"] = [a | {"category_id": mapping[a["category_id"]]}
                            for a in d["annotations"] if a["category_id"] in mapping]  # fmt: skip
        (out / f"annotations/instances_{split}.json").write_text(json.dumps(d))
    return out


@pytest.mark.slow
def test_fine_tune_five_classes_to_three_trains_evaluates_infers_exports(
    tiny_shapes, tmp_path, monkeypatch
):
    from detkit.api import build_trainer, evaluate, resume, train
    from detkit.cli import main
    from detkit.models.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    # 5 classes: the 4 shapes, stars with even ids relabelled "hexagon"; 3 classes: star and
    # circle shared (another order), squares as the new class "pentagon"
    src = _relabelled(tiny_shapes, tmp_path / "five", SOURCE, {1: 1, 2: 2, 3: 3, 4: 4})
    dst = _relabelled(tiny_shapes, tmp_path / "three", TARGET, {4: 1, 2: 2, 1: 3})
    common = ["format=coco", "img_size=64", "batch=8", "workers=0", "quiet=true", "epochs=1"]
    run = train(None, [*common, f"root={src}", "model=yolo_n", *SMALL["yolo_n"], "name=src"])
    weights = run / "last.pt"

    cfg, start = train_config(None, [*common, f"root={dst}", f"model={weights}", "epochs=2",
                                     "max_steps=1", "freeze=backbone", "name=ft"], {})  # fmt: skip
    trainer = build_trainer(cfg, start=start)
    ema = load_checkpoint(weights)["ema"]
    got = trainer.model.state_dict()
    for key in got:  # before any step: the EMA weights, class rows by name
        if key.startswith("heads.") and ".cls." in key:
            assert torch.equal(got[key][0], ema[key][SOURCE.index("star")])
            assert torch.equal(got[key][2], ema[key][SOURCE.index("circle")])
        else:
            assert torch.equal(got[key], ema[key]), key
    backbone = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    assert trainer.opts.recipe == (  # the line the start of training logs (quiet=false)
        "recipe 'finetune' (configs/recipes/finetune.yaml; weights= given): mosaic=1.0 "
        "close_mosaic=5 lr=0.002 warmup_epochs=1.0; set by your config or command line instead: "
        "batch=8 (recipe 16)"
    )
    ft = trainer.fit()  # stops after one epoch (max_steps), resumable
    report = (ft / "initial_weights.txt").read_text()
    assert str(weights) in report and "pentagon" in report and "frozen" in report
    weights.unlink()  # --resume continues the fine-tuned run from its own last.pt alone
    assert resume(ft / "last.pt", ["max_steps=0"]) == ft  # frozen parts stay frozen
    after = load_checkpoint(ft / "last.pt")
    assert after["class_names"] == TARGET and after["epoch"] == 2
    tuned = after["model"]
    assert any(not torch.equal(tuned[k], ema[k]) for k in tuned if k.startswith("heads."))
    for key, value in backbone.items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(tuned[f"backbone.{key}"], value), key  # frozen

    result = evaluate(ft / "last.pt", plots=False)
    assert "mAP50-95" in result.result.stats
    assert main(["infer", str(dst / "images/val"), "--weights", str(ft / "last.pt")]) == 0
    pytest.importorskip("onnxruntime")
    assert main(["export", "--weights", str(ft / "last.pt"), "--output", "ft.onnx"]) == 0
    assert (tmp_path / "ft.onnx").is_file()


@pytest.mark.slow
def test_torchvision_backbone_checkpoint_deploys_and_exports(tmp_path, monkeypatch):
    """A run with ``pretrained=true`` saves a checkpoint that loads, folds and exports with no
    download and no weights file (the deploy record keeps neither)."""
    pytest.importorskip("onnxruntime")
    from detkit.config.build import load_model
    from detkit.inference.export import compare_with_torch, export_checkpoint

    def no_network(*args, **kwargs):
        raise AssertionError("nothing may be downloaded when a checkpoint is loaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cfg = _cfg("yolo_n", "backbone=mobilenet_v3_large", "pretrained=true")
    path = tmp_path / "best.pt"
    model = _trained_bn(build_model(cfg.model, 3, load_weights=False))
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": TARGET,
                     "deploy": deploy_record(cfg, TARGET, None).to_dict()}, path)  # fmt: skip
    loaded, _, deploy = load_model(path)
    assert deploy.model["backbone"] == "mobilenet_v3_large" and not deploy.model["pretrained"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    onnx = export_checkpoint(path, tmp_path / "m.onnx", img_size=64)
    assert "onnxruntime == PyTorch" in compare_with_torch(onnx, path, atol=1e-3)
