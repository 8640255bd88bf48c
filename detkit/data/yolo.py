"""YOLO (Ultralytics) reader and writer: the one place normalised ``cxcywh`` rows live. A
``data.yaml`` has ``path``, ``train``/``val`` (folders, ``.txt`` lists, or lists of them) and
``names``; ``images/.../x.jpg`` has its rows in ``labels/.../x.txt`` (none: a negative)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import yaml

from detkit.boxes.coords import box_convert
from detkit.core.yamlio import YamlError, load_yaml
from detkit.data.check import DataError, DataReport
from detkit.data.images import IMAGE_SUFFIXES
from detkit.data.source import DetectionSource, ImageEntry, SourceOptions, table_from_entries

TOLERANCE = 0.01
"""Coordinates may stray this far outside [0, 1] (then the box is clipped); further is an error."""


class YoloDataset(DetectionSource):
    """One split of an Ultralytics-layout YOLO dataset. Image ids are ``1..N`` in sorted path
    order; category id of label ``i`` is ``i + 1``. EXIF orientation is always applied (YOLO
    records no image size, and labelling tools show photos upright)."""

    format = "yolo"

    def __init__(
        self,
        data_yaml: str | Path,
        split: str,
        class_names: list[str] | None = None,
        *,
        skip_invalid: bool = False,
        name: str | None = None,
        **options: Unpack[SourceOptions],
    ) -> None:
        """Index and check the images of key ``split``; ``class_names`` serve when the yaml
        has no ``names`` (else they must agree). Raises FileNotFoundError (the yaml or a listed
        folder or list), DataError (a malformed yaml, invalid rows unless ``skip_invalid``)."""
        self.data_yaml = Path(data_yaml)
        doc = _read_yaml(self.data_yaml)
        self.base = _base_path(self.data_yaml, doc)
        names = _names(self.data_yaml, doc, class_names)
        if split not in doc or not doc[split]:
            raise DataError(f"{self.data_yaml}: no {split!r} entry (images of that split)")
        report = DataReport(name=name or f"yolo {split}", skip_invalid=skip_invalid)
        paths = self._image_paths(doc[split], report)
        entries = [_read_labels(path, i, len(names), report) for i, path in enumerate(paths, 1)]
        table = table_from_entries([e for e in entries if e is not None], normalized=True)
        super().__init__(report, self.base, **options)
        self._check_table(table, names, list(range(1, len(names) + 1)))

    def protected_dirs(self) -> list[Path]:
        """The dataset root (``path``) and the yaml's folder."""
        return [self.base, self.data_yaml.parent]

    def _image_paths(self, spec: str | list[str], report: DataReport) -> list[Path]:
        """Images named by a split entry (folder, ``.txt`` list, image, or a list of those)."""
        items = spec if isinstance(spec, list) else [spec]
        paths: list[Path] = []
        for item in items:
            p = self.base / str(item)  # an absolute item stays itself
            if p.is_dir():
                paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            elif p.suffix.lower() == ".txt" and p.is_file():
                paths += _listed_images(p, self.base)
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
            else:
                raise FileNotFoundError(f"{self.data_yaml}: images {item!r} not found at {p}")
        unique: dict[str, Path] = {}
        for p in paths:
            if unique.setdefault(os.path.normpath(p), p) is not p:
                report.add("image_duplicate", str(p))
        return list(unique.values())


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``/images/`` becomes ``/labels/``, suffix ``.txt``.

    Example:
        >>> label_path(Path("/d/images/train/a.b.jpg")).as_posix()
        '/d/labels/train/a.b.txt'
    """
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(labels.join(str(image).rsplit(images, 1))).with_suffix(".txt")


def _listed_images(listing: Path, base: Path) -> list[Path]:
    """Image paths in a ``.txt`` list: ``./x`` relative to the list's folder, else to ``base``."""
    lines = [s.strip() for s in listing.read_text(encoding="utf-8-sig").splitlines() if s.strip()]
    return [listing.parent / s[2:] if s.startswith("./") else base / s for s in lines]


def _read_labels(
    image: Path, image_id: int, num_classes: int, report: DataReport
) -> ImageEntry | None:
    """The entry of ``image`` (boxes xyxy fractions) from its label file; None if unreadable."""
    path = label_path(image)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        no_rows = np.zeros((0, 4)), np.zeros(0, np.int64)
        return ImageEntry(image, image_id, str(path), *no_rows, no_label_file=True)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        report.add("file_malformed", f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
        return None
    if data.startswith(b"\xef\xbb\xbf") or b"\r" in data:
        report.add("label_bom_crlf", str(path))
    boxes, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        row = _parse_row(line, num_classes)
        if isinstance(row, tuple):
            boxes.append(row[0])
            labels.append(row[1])
        elif row:
            kind, why = row.split(":", 1)
            report.add(kind, f"{path} line {lineno}:{why}")
    xyxy = box_convert(np.array(boxes, dtype=np.float64).reshape(-1, 4), "cxcywh", "xyxy")
    return ImageEntry(image, image_id, str(path), xyxy, np.array(labels, np.int64))


def _parse_row(line: str, num_classes: int) -> tuple[list[float], int] | str:
    """``(cxcywh fractions, label)``, ``""`` for a blank line, or ``"kind: reason"``."""
    if not (tokens := line.split()):
        return ""
    if len(tokens) != 5:
        return f"ann_malformed: {len(tokens)} columns, expected 5 (class cx cy w h): {line.strip()!r:.60}"
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return f"ann_malformed: non-numeric token in {line.strip()!r:.60}"
    cls, cx, cy, w, h = values
    if not (math.isfinite(cls) and cls.is_integer()):
        return f"ann_malformed: class {tokens[0]!r} is not an integer"
    if not 0 <= cls < num_classes:
        return f"ann_unknown_class: class {int(cls)} not in 0..{num_classes - 1}"
    coords = (cx, cy, w, h)
    if any(math.isfinite(v) and not -TOLERANCE <= v <= 1 + TOLERANCE for v in coords):
        return (
            f"ann_malformed: coordinates {tokens[1:]} outside [0, 1] (YOLO rows hold fractions "
            "of the image size, not pixels)"
        )
    return [cx, cy, w, h], int(cls)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"YOLO data file not found: {path}")
    try:
        doc = load_yaml(path.read_text(encoding="utf-8-sig"), str(path))
    except YamlError as e:
        raise DataError(f"{e.where}: malformed YAML: {e.problem}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with train/val/names")
    return doc


def _base_path(data_yaml: Path, doc: dict[str, Any]) -> Path:
    """The dataset root: ``path`` (absolute, or relative to the yaml's folder), else that folder."""
    return data_yaml.parent / Path(str(doc.get("path") or "")).expanduser()


def _names(data_yaml: Path, doc: dict[str, Any], given: list[str] | None) -> list[str]:
    """Class names from ``names`` (list or ``{index: name}``), checked against ``nc``."""
    raw = doc.get("names")
    if raw is None:
        if not given:
            raise DataError(f"{data_yaml}: no 'names' (pass class_names=[...])")
        names = list(given)
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    elif isinstance(raw, dict):
        try:
            keyed = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise DataError(f"{data_yaml}: 'names' keys must be class indices 0..n-1") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DataError(
                f"{data_yaml}: 'names' keys {sorted(keyed)} are not 0..{len(keyed) - 1}"
            )
        names = [keyed[i] for i in range(len(keyed))]
    else:
        raise DataError(f"{data_yaml}: 'names' must be a list or a mapping")
    if given and list(given) != names:
        raise DataError(f"{data_yaml}: names {names} differ from class_names {list(given)}")
    nc = doc.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"{data_yaml}: nc={nc} but {len(names)} names")
    if not names:
        raise DataError(f"{data_yaml}: no class names")
    return names


def yolo_rows(
    boxes: np.ndarray, labels: np.ndarray, height: int, width: int, scores: np.ndarray | None = None
) -> str:
    """The one YOLO row writer: ``[N, 4]`` xyxy orig px -> ``class cx cy w h`` rows, 6 decimals,
    each ending in a newline; ``scores`` (5 decimals) as a sixth column.

    Example:
        >>> yolo_rows(np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([2]), 100, 200)
        '2 0.100000 0.400000 0.100000 0.400000\\n'
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    rows = box_convert(b, "xyxy", "cxcywh") / scale
    tails = [""] * len(rows) if scores is None else [f" {float(s):.5f}" for s in scores]
    return "".join(
        f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}{tail}\n"
        for c, (x, y, w, h), tail in zip(
            np.asarray(labels).tolist(), rows.tolist(), tails, strict=True
        )
    )


def yolo_yaml(splits: dict[str, str], class_names: list[str]) -> str:
    """``data.yaml`` text of ``splits`` (key -> images folder relative to the yaml) and the
    names as ``{index: name}``; no ``path``, so the yaml's own folder is the root."""
    doc = {**splits, "nc": len(class_names), "names": dict(enumerate(class_names))}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
