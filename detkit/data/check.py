"""Validation of datasets when they are opened: each issue kind (:data:`ISSUES`) is repaired,
skipped or invalid (a :class:`DataError` naming file and line or id, unless ``skip_invalid``),
and counted in one :class:`DataReport` per split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detkit.core.io import write_json, write_text

logger = logging.getLogger(__name__)

MIN_BOX_SIZE = 1.0
"""Boxes narrower or shorter than this (orig px, after clipping) are dropped."""

MAX_EXAMPLES = 5
"""Examples (file and line / annotation id) kept per issue kind."""


class DataError(ValueError):
    """A dataset that cannot be read as given; the message names the file and line or id."""


@dataclass(frozen=True)
class IssueKind:
    """One kind of problem: its summary ``text``, ``action`` (``"repaired"``, ``"skipped"`` or
    ``"invalid"``) and whether it ``changes_gt`` (evaluation then needs a cleaned copy)."""

    text: str
    action: str
    changes_gt: bool = True


ISSUES: dict[str, IssueKind] = {
    "image_missing": IssueKind("image file missing", "skipped"),
    "image_unreadable": IssueKind("image unreadable, empty or not an image", "skipped"),
    "image_truncated": IssueKind("image truncated (JPEG/PNG ends early)", "skipped"),
    "image_corrupt": IssueKind(
        "image does not decode cleanly (damaged data or a decoder warning)", "skipped"
    ),
    "image_too_large": IssueKind("image over the pixel limit (decompression bomb)", "skipped"),
    "image_too_small": IssueKind("image smaller than the minimum side", "skipped"),
    "image_duplicate": IssueKind("image listed twice", "skipped"),
    "image_exif": IssueKind(
        "EXIF orientation applied (as labelling tools show it)", "repaired", False
    ),
    "image_exif_ignored": IssueKind(
        "EXIF orientation ignored: annotated size matches stored pixels", "repaired", False
    ),
    "image_size_missing": IssueKind(
        "image size missing in annotation, read from file", "repaired", False
    ),
    "image_size_scaled": IssueKind("annotated size differs from file: boxes scaled", "repaired"),
    "image_size_mismatch": IssueKind(
        "annotated size differs from file (other aspect): boxes kept in px", "repaired", False
    ),
    "image_basename": IssueKind(
        "file_name not found as given, found by base name", "repaired", False
    ),
    "image_escapes_root": IssueKind("file name escapes the dataset root", "invalid"),
    "image_id_duplicate": IssueKind("duplicate image id", "invalid"),
    "file_malformed": IssueKind("malformed or missing annotation file", "invalid"),
    "ann_malformed": IssueKind("malformed annotation or label row", "invalid"),
    "ann_unknown_class": IssueKind("class id or name not in the class list", "invalid"),
    "ann_unknown_image": IssueKind("annotation names an unknown image id", "invalid"),
    "ann_id_duplicate": IssueKind("duplicate or zero annotation id (renumbered)", "repaired"),
    "label_bom_crlf": IssueKind(
        "label file with BOM or CRLF line ends (read fine)", "repaired", False
    ),
    "category_background": IssueKind("unused 'background' category dropped", "repaired", False),
    "box_nan": IssueKind("box with NaN or infinite coordinates", "skipped"),
    "box_empty": IssueKind("box with zero or negative size", "skipped"),
    "box_outside": IssueKind("box wholly outside the image", "skipped"),
    "box_clipped": IssueKind("box partly outside the image: clipped", "repaired", False),
    "box_tiny": IssueKind(f"box under {MIN_BOX_SIZE:g} px after clipping", "skipped"),
    "box_duplicate": IssueKind("exact duplicate box (same class)", "skipped"),
}


@dataclass
class IssueCount:
    """How often one issue kind occurred, with the first few places it occurred."""

    count: int = 0
    examples: list[str] = field(default_factory=list)


_COUNTS = ("name", "images", "kept", "negatives", "no_label_file", "boxes", "ignored")


@dataclass
class DataReport:
    """What a reader found when it opened one split: ``images`` listed, ``kept`` (served),
    ``negatives`` (kept without a training box; ``no_label_file``: YOLO's without a file),
    ``ignored`` crowd / difficult boxes (evaluation only), ``issues`` by kind."""

    name: str = ""
    images: int = 0
    kept: int = 0
    negatives: int = 0
    no_label_file: int = 0
    boxes: int = 0
    ignored: int = 0
    issues: dict[str, IssueCount] = field(default_factory=dict)
    skip_invalid: bool = False

    def add(self, kind: str, where: str, count: int = 1) -> None:
        """Count ``count`` occurrences of ``kind`` at ``where`` (e.g. ``"a.txt line 3: ..."``)."""
        self.add_rows(kind, np.zeros(max(count, 0), np.int64), lambda _: where)

    def add_rows(self, kind: str, rows: np.ndarray, where: Callable[[int], str]) -> None:
        """Count one ``kind`` per entry of ``rows``; examples are ``where(row)`` of the first."""
        rows = np.asarray(rows).reshape(-1)
        if kind not in ISSUES:
            raise KeyError(f"unknown issue kind {kind!r}")
        if not len(rows):
            return
        entry = self.issues.setdefault(kind, IssueCount())
        entry.count += len(rows)
        room = MAX_EXAMPLES - len(entry.examples)
        if room > 0:
            _, first = np.unique(rows, return_index=True)
            entry.examples += [where(int(r)) for r in rows[np.sort(first)][:room].tolist()]

    def count(self, kind: str) -> int:
        return self.issues[kind].count if kind in self.issues else 0

    def changes_gt(self) -> bool:
        """True when a repair or skip makes the served ground truth differ from the file."""
        return any(ISSUES[k].changes_gt for k, v in self.issues.items() if v.count)

    def raise_if_invalid(self) -> None:
        """Raise :class:`DataError` naming each invalid kind (count, first places), unless
        ``skip_invalid``."""
        invalid = {k: v for k, v in self.issues.items() if ISSUES[k].action == "invalid"}
        if not invalid or self.skip_invalid:
            return
        total = sum(v.count for v in invalid.values())
        lines = [f"{self.name}: {total} invalid entr{'y' if total == 1 else 'ies'}:"]
        for kind, entry in invalid.items():
            lines.append(f"  {ISSUES[kind].text} ({entry.count}):")
            lines += [f"    {where}" for where in entry.examples]
        lines.append("fix them, or pass skip_invalid=true to skip such entries (counted)")
        raise DataError("\n".join(lines))

    def raise_if_empty(self) -> None:
        """Raise :class:`DataError` when ``kept == 0``, naming the issue that skipped most."""
        if self.kept > 0:
            return
        lost = {k: v for k, v in self.issues.items() if ISSUES[k].action in ("invalid", "skipped")}
        if not lost:
            raise DataError(f"{self.name}: no usable image: the split lists none")
        kind, entry = max(lost.items(), key=lambda kv: kv[1].count)
        first = f", first: {entry.examples[0]}" if entry.examples else ""
        raise DataError(
            f"{self.name}: no usable image; most common reason: "
            f"{ISSUES[kind].text} ({entry.count}){first}"
        )

    def table(self) -> str:
        """The summary as plain text, one row per issue kind found."""
        head = (
            f"{self.name}: {self.kept} of {self.images} images kept, {self.negatives} negatives"
            f" ({self.no_label_file} without a label file), {self.boxes} boxes,"
            f" {self.ignored} crowd/difficult boxes for evaluation only"
        )
        if not self.issues:
            return head + "\n  no problems found"
        rows = [head, f"  {'issue':<64} {'action':<8} {'count':>7}  first at"]
        for kind, entry in self.issues.items():
            issue = ISSUES[kind]
            action = "skipped" if issue.action == "invalid" else issue.action
            first = entry.examples[0] if entry.examples else ""
            rows.append(f"  {issue.text:<64} {action:<8} {entry.count:>7}  {first}")
        return "\n".join(rows)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataReport:
        """The report :meth:`to_dict` wrote; KeyError for a missing or unknown field or kind."""
        report = cls(**{k: d[k] for k in _COUNTS})
        for kind, v in d["issues"].items():
            if kind not in ISSUES:
                raise KeyError(f"unknown issue kind {kind!r}")
            report.issues[kind] = IssueCount(int(v["count"]), list(v["examples"]))
        return report

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in _COUNTS},
            "issues": {
                k: {"text": ISSUES[k].text, "action": ISSUES[k].action, **vars(v)}
                for k, v in self.issues.items()
            },
        }


def clean_box_rows(
    boxes: np.ndarray,
    labels: np.ndarray,
    owner: np.ndarray,
    sizes: np.ndarray,
    report: DataReport,
    where: Callable[[int], str],
    group: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep, clip and count (``box_*`` issues, ``where(image row)``) a whole split's ``[M, 4]``
    xyxy orig px ``boxes`` (may hold NaN; not modified) in one pass; ``owner`` ``[M]`` is each
    box's image row (ascending), ``sizes`` ``[N, 2]`` (h, w); boxes are duplicates only within a
    ``group`` (crowd boxes apart). Returns int64 ``[K]`` ascending indices of the kept boxes and
    float32 ``[K, 4]`` those boxes clipped to their image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels, owner = np.asarray(labels).reshape(-1), np.asarray(owner, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(boxes).all(axis=1)
    report.add_rows("box_nan", owner[~finite], where)
    safe = np.where(finite[:, None], boxes, 0.0)
    empty = finite & ((safe[:, 2] <= safe[:, 0]) | (safe[:, 3] <= safe[:, 1]))
    report.add_rows("box_empty", owner[empty], where)
    ok = finite & ~empty
    h, w = sizes[owner, 0], sizes[owner, 1]
    clipped = np.clip(safe, 0.0, np.stack([w, h, w, h], axis=1))
    outside = ok & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    report.add_rows("box_outside", owner[outside], where)
    ok &= ~outside
    moved = ok & (clipped != safe).any(axis=1)
    tiny = ok & ((clipped[:, 2:] - clipped[:, :2]) < MIN_BOX_SIZE).any(axis=1)
    report.add_rows("box_tiny", owner[tiny], where)
    ok &= ~tiny
    report.add_rows("box_clipped", owner[moved & ok], where)
    keep = np.flatnonzero(ok)
    if len(keep) > 1:
        extra = np.zeros(len(boxes)) if group is None else np.asarray(group, dtype=np.float64)
        rows = np.column_stack(
            [owner[keep], extra[keep], clipped[keep], labels[keep].astype(np.float64)]
        )
        _, first = np.unique(rows, axis=0, return_index=True)
        duplicate = np.ones(len(keep), dtype=bool)
        duplicate[first] = False
        report.add_rows("box_duplicate", owner[keep[duplicate]], where)
        keep = keep[np.sort(first)]
    return keep.astype(np.int64), clipped[keep].astype(np.float32)


def format_report(reports: Mapping[str, DataReport] | list[DataReport]) -> str:
    """The summary tables of several splits (a mapping's keys are ignored), one after another."""
    items = reports.values() if isinstance(reports, Mapping) else reports
    return "\n".join(r.table() for r in items)


def data_report(
    datasets: Mapping[str, Any], out_dir: str | Path | None = None, log: bool = True
) -> str:
    """The summary text of ``datasets`` (split name -> reader; those without a ``report`` left out),
    logged at INFO when ``log``, written as ``data_report.txt``/``.json`` into an ``out_dir``."""
    reports = {k: getattr(d, "report", None) for k, d in datasets.items()}
    reports = {k: r for k, r in reports.items() if isinstance(r, DataReport)}
    text = format_report(reports)
    if log:
        logger.info("data:\n%s", text)
    if out_dir is not None:
        write_text(Path(out_dir) / "data_report.txt", text + "\n")
        as_json = {k: r.to_dict() for k, r in reports.items()}
        write_json(Path(out_dir) / "data_report.json", as_json, indent=1)
    return text
