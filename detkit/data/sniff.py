"""What a file given as a dataset (``data=FILE``) or as a config is: the one sniffer the config
resolution and the API share, reading its suffix and top-level keys only."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from detkit.core.yamlio import load_yaml

# the top-level keys of an Ultralytics data.yaml
YOLO_KEYS = frozenset({"train", "val", "test", "names", "nc", "path", "download"})
_VAL_NAMES = ("val", "valid", "validation")


def sniff_data_file(path: Path, sections: Collection[str] = ()) -> str | None:
    """``"coco"`` for a ``.json`` file, ``"yolo"`` for an Ultralytics data.yaml (a mapping of
    :data:`YOLO_KEYS` only, with ``names`` or both ``train`` and ``val``), ``"sections"`` for a
    YAML mapping whose keys all are in ``sections`` (an experiment file); None for anything else
    (another YAML, a folder, a missing file). YamlError for a YAML file that does not parse."""
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in (".json", ".yaml", ".yml"):
        return None
    if suffix == ".json":
        return "coco"
    raw = load_yaml(path.read_text(encoding="utf-8-sig"), str(path))
    if not isinstance(raw, dict) or not raw:
        return None
    if set(raw) <= YOLO_KEYS and ("names" in raw or {"train", "val"} <= set(raw)):
        return "yolo"
    return "sections" if set(raw) <= set(sections) else None


def val_json_for(train_json: Path) -> Path | None:
    """The val split's json beside a training json: its name with ``val`` (``valid``,
    ``validation``) for ``train`` (``instances_train2017.json`` -> ``instances_val2017.json``),
    or that name or the same one in a ``val`` folder beside a ``train`` folder (Roboflow's
    ``train/_annotations.coco.json`` -> ``valid/_annotations.coco.json``); None when there is
    none, or the json is not a training split's."""
    name, folder = train_json.name, train_json.parent
    names = [name.replace("train", v) for v in _VAL_NAMES if "train" in name]
    candidates = [folder / n for n in names]
    if "train" in folder.name:
        folders = [folder.parent / folder.name.replace("train", v) for v in _VAL_NAMES]
        candidates += [f / n for f in folders for n in (name, *names)]
    return next((c for c in candidates if c.is_file() and c != train_json), None)
