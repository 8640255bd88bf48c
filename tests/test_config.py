"""Config: YAML + overrides into dataclasses; clear errors for unknown keys and wrong types."""

from __future__ import annotations

import pytest

from detkit.config import ConfigError, config_from_dict, load_config, save_config


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


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"valid keys: .*epochs"):
        load_config(overrides=["train.epochz=1"])


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
