"""Pascal VOC reader and writer: the one place VOC's 1-based inclusive boxes live (pixel-edge
box ``[xmin - 1, ymin - 1, xmax, ymax]``, floats alike). Layout: ``<year>/Annotations/<id>.xml``,
``<year>/JPEGImages/<id>.jpg``, ``<year>/ImageSets/Main/<split>.txt``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack
from xml.parsers import expat
from xml.sax.saxutils import escape

import numpy as np

from detkit.data.check import DataReport
from detkit.data.images import IMAGE_SUFFIXES
from detkit.data.source import DetectionSource, ImageEntry, SourceOptions, table_from_entries

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC classes in the standard (alphabetical) order; label ``i`` is id ``i + 1``."""

_COORDS = ("xmin", "ymin", "xmax", "ymax")


class VocDataset(DetectionSource):
    """A Pascal VOC split (possibly of several years): ``difficult`` objects are evaluation-only
    (``iscrowd``), image ids ``1..N`` in listing order, label ``i`` is category id ``i + 1``."""

    format = "voc"

    def __init__(
        self,
        root: str | Path,
        splits: list[str],
        class_names: list[str] | tuple[str, ...] | None = None,
        *,
        skip_invalid: bool = False,
        name: str | None = None,
        **options: Unpack[SourceOptions],
    ) -> None:
        """Index and check the images of ``splits``, ``"<year folder>/<split>"`` entries
        (``"VOC2007/trainval"``) under the VOCdevkit ``root``, or ``"<split>"`` when ``root`` is
        the year folder; ``class_names`` None: :data:`VOC_CLASSES`. Raises FileNotFoundError
        (``root`` or a list missing), DataError (invalid entries unless ``skip_invalid``)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root not found: {self.root}")
        if not splits:
            raise ValueError("VOC needs at least one 'year/split' entry, e.g. VOC2007/trainval")
        names = list(class_names if class_names else VOC_CLASSES)
        report = DataReport(name=name or f"voc {'+'.join(splits)}", skip_invalid=skip_invalid)
        index = {n: i for i, n in enumerate(names)}
        entries, seen = [], set()
        for year_dir, vid in self._listed(splits, report):
            if (year_dir, vid) in seen:
                report.add("image_duplicate", f"{year_dir / 'ImageSets'}: {vid}")
                continue
            seen.add((year_dir, vid))
            if (entry := _read_entry(year_dir, vid, len(entries) + 1, index, report)) is not None:
                entries.append(entry)
        super().__init__(report, self.root, **options)
        self._check_table(table_from_entries(entries), names, list(range(1, len(names) + 1)))

    def protected_dirs(self) -> list[Path]:
        """The VOCdevkit (or year) folder."""
        return [self.root]

    def _listed(self, splits: list[str], report: DataReport) -> list[tuple[Path, str]]:
        """``(year folder, image id)`` of every id in the split lists, in order; an id with a
        path separator or ``..`` would read outside the dataset (``image_escapes_root``)."""
        out = []
        for spec in splits:
            year, _, split = spec.rpartition("/")
            year_dir = self.root / year if year else self.root
            listing = year_dir / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise FileNotFoundError(
                    f"VOC split list not found: {listing} (from entry {spec!r}; expected "
                    "<root>/<year>/ImageSets/Main/<split>.txt)"
                )
            text = listing.read_text(encoding="utf-8-sig")
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                vid = line.split()[0]
                if "/" in vid or "\\" in vid or vid.strip(".") == "" or "\0" in vid:
                    report.add("image_escapes_root", f"{listing} line {number}: id {vid!r}")
                    continue
                out.append((year_dir, vid))
        return out


@dataclass
class _Node:
    """An XML element with the line it starts on (ElementTree keeps no line numbers)."""

    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findtext(self, tag: str) -> str | None:
        node = self.find(tag)
        return None if node is None else node.text


def parse_xml(data: bytes) -> _Node:
    """Parse XML into ``_Node`` trees with line numbers (expat; no external entities);
    ``expat.ExpatError`` (``lineno`` says where) for malformed XML."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    parts: list[list[str]] = []
    top: list[_Node] = []

    def start(tag: str, _attrs: dict[str, str]) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else top).append(node)
        stack.append(node)
        parts.append([])

    def end(_tag: str) -> None:
        stack.pop().text = "".join(parts.pop()).strip()

    def chars(text: str) -> None:
        if parts:
            parts[-1].append(text)

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = chars
    parser.Parse(data, True)
    return top[0]


def _read_entry(
    year_dir: Path, vid: str, image_id: int, index: dict[str, int], report: DataReport
) -> ImageEntry | None:
    """Parse ``Annotations/<vid>.xml``; None (counted) when the file is missing or malformed."""
    xml = year_dir / "Annotations" / f"{vid}.xml"
    try:
        root = parse_xml(xml.read_bytes())
    except FileNotFoundError:
        report.add("file_malformed", f"{xml}: annotation file missing")
        return None
    except expat.ExpatError as e:
        why = expat.ErrorString(e.code)
        report.add("file_malformed", f"{xml} line {e.lineno}: malformed XML: {why}")
        return None
    if root.tag != "annotation":
        report.add(
            "file_malformed", f"{xml} line {root.line}: root is <{root.tag}>, not <annotation>"
        )
        return None
    name = root.findtext("filename")
    if (path := _image_path(year_dir, vid, name)) is None:
        report.add("image_escapes_root", f"{xml}: <filename>{name}</filename> escapes {year_dir}")
        return None
    found = (_read_object(o, xml, index, report) for o in root.children if o.tag == "object")
    objects = [o for o in found if o is not None]
    boxes, labels, crowd = ([o[k] for o in objects] for k in range(3))
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    labels, crowd = np.array(labels, dtype=np.int64), np.array(crowd, dtype=bool)
    return ImageEntry(path, image_id, str(xml), boxes, labels, crowd, _declared_size(root))


def _read_object(
    obj: _Node, xml: Path, index: dict[str, int], report: DataReport
) -> tuple[list[float], int, bool] | None:
    """``(xyxy px-edge box, label, difficult)`` of one ``<object>``; None (counted) if invalid."""
    where = f"{xml} line {obj.line}"
    name = (obj.findtext("name") or "").strip()
    if name not in index:
        names = list(index)
        shown = names if len(names) <= 20 else [*names[:20], "..."]
        report.add("ann_unknown_class", f"{where}: class {name!r} not in class_names {shown}")
        return None
    box = obj.find("bndbox")
    try:
        xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in _COORDS)  # type: ignore[union-attr,arg-type]
        difficult = bool(int(float(obj.findtext("difficult") or 0)))
    except (AttributeError, TypeError, ValueError):
        report.add("ann_malformed", f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax")
        return None
    # 1-based inclusive pixel indices -> pixel edges: pixel i covers [i - 1, i].
    return [xmin - 1.0, ymin - 1.0, xmax, ymax], index[name], difficult


def _declared_size(root: _Node) -> tuple[int, int] | None:
    size = root.find("size")
    try:
        h, w = int(float(size.findtext("height"))), int(float(size.findtext("width")))  # type: ignore[union-attr,arg-type]
    except (AttributeError, TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _image_path(year_dir: Path, vid: str, filename: str | None) -> Path | None:
    """The image of ``vid``: ``JPEGImages/<vid>.jpg``, else ``<filename>`` (None when it escapes
    ``JPEGImages``), else another suffix, else ``<vid>.jpg`` (the check counts it missing)."""
    folder = year_dir / "JPEGImages"
    default = folder / f"{vid}.jpg"
    if default.is_file():
        return default
    if filename:
        base = os.path.normpath(os.path.abspath(folder))
        path = os.path.normpath(os.path.join(base, filename))
        if os.path.commonpath([base, path]) != base:
            return None
        if os.path.isfile(path):
            return Path(path)
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{vid}{suffix}").is_file():
            return folder / f"{vid}{suffix}"
    return default


def voc_xml(
    file_name: str,
    height: int,
    width: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
    class_names: list[str],
) -> str:
    """One VOC annotation file as text; ``boxes`` ``[N, 4]`` xyxy orig px are written as 1-based
    inclusive integers (``xmin = round(x1) + 1``, ``xmax = round(x2)``: 0.5 px at most)."""
    lines = [
        "<annotation>",
        "  <folder>detkit</folder>",
        f"  <filename>{escape(file_name)}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for (x1, y1, x2, y2), label, hard in zip(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist(),
        np.asarray(labels).tolist(),
        np.asarray(difficult, dtype=bool).tolist(),
        strict=True,
    ):
        xmin, ymin = min(_round(x1) + 1, width), min(_round(y1) + 1, height)
        xmax, ymax = max(min(_round(x2), width), xmin), max(min(_round(y2), height), ymin)
        lines += [
            "  <object>",
            f"    <name>{escape(class_names[label])}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(hard)}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*lines, "</annotation>", ""])


def _round(v: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return math.floor(v + 0.5)
