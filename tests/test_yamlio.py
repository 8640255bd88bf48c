"""Strict YAML: duplicate keys and unsafe tags are errors naming the file, the line and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detkit.config import CONFIG_DIR, ConfigError, load_config
from detkit.core.yamlio import YamlError, load_yaml
from detkit.data.check import DataError
from detkit.data.yolo import YoloDataset


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "names: [red, green]\nnames: [green, red]\n",
            "line 2: duplicate key 'names' (first at line 1)",
        ),
        (
            "model:\n  anchors: 1\n  depth: 2\n  anchors: 3\n",
            "line 4: duplicate key 'anchors' (first at line 2)",
        ),
        ("a: {x: 1, x: 2}\n", "line 1: duplicate key 'x'"),
        ("- {k: 1}\n- {k: 2, k: 3}\n", "line 2: duplicate key 'k'"),
        ("1: a\n1: b\n", "line 2: duplicate key 1"),
    ],
)
def test_duplicate_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(YamlError, match=re.escape(f"f.yaml {message}")):
        load_yaml(text, "f.yaml")


def test_what_stays_legal() -> None:
    assert load_yaml("a: 1\nb: {a: 2}\nc: [{a: 3}, {a: 4}]\n") == {
        "a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]
    }  # fmt: skip
    doc = load_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n")
    assert doc["d"] == {"x": 1, "y": 3}  # a merge key may be overridden
    assert load_yaml("") is None


def test_unsafe_tags_are_refused_with_the_file_and_line() -> None:
    with pytest.raises(YamlError, match=r"^evil\.yaml line 2: .*python/object/apply:os\.system"):
        load_yaml("a: 1\nb: !!python/object/apply:os.system [echo hi]\n", "evil.yaml")


def test_every_shipped_config_is_free_of_duplicates() -> None:
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        load_yaml(path.read_text(encoding="utf-8"), str(path))


def test_config_file_with_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.01\n  epochs: 30\n")
    with pytest.raises(ConfigError, match=rf"{path} line 4: invalid YAML: duplicate key 'epochs'"):
        load_config(path)


def test_yolo_data_yaml_with_swapped_names_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("train: images\nnames: [red, green]\nnames: [green, red]\n")
    with pytest.raises(
        DataError, match=r"data\.yaml line 3: malformed YAML: duplicate key 'names'"
    ):
        YoloDataset(tmp_path / "data.yaml", "train")


def test_check_data_on_an_unsafe_yaml_prints_one_line(tmp_path: Path, capsys) -> None:
    from detkit.cli import main

    path = tmp_path / "data.yaml"
    path.write_text("train: images\nnames: !!python/object/apply:os.system [echo pwned]\n")
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 2" in err and "Traceback" not in err


def test_no_module_reads_yaml_around_the_strict_loader() -> None:
    import detkit

    package = Path(detkit.__file__).parent
    bypass = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|load_all)\(")
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "yamlio.py" and bypass.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []  # every YAML detkit reads goes through load_yaml
