"""Write an evaluation to disk: COCO results JSON, a JSON summary of every number, PNG plots."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detkit.core.io import write_json
from detkit.core.protocols import DetectionSplit
from detkit.eval.gallery import image_errors, write_worst_images
from detkit.eval.runner import EvalResult

log = logging.getLogger(__name__)


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    meta: dict[str, Any] | None = None,
    plots: bool = True,
    source: DetectionSplit | None = None,
    worst: int = 0,
    predictions: bool = True,
    summary_name: str = "metrics.json",
) -> dict[str, Path]:
    """Save one evaluation in the folder ``out_dir``; returns name -> path of every file written:
    ``predictions.json`` (when ``predictions``), the summary ``summary_name`` (``meta`` plus
    :meth:`EvalResult.to_dict`; written before any picture and again after them, a plot that
    fails listed under ``plot_errors``), the plots of a detailed result (when ``plots``) and,
    with ``worst`` and ``source`` (the split), the ``worst/`` gallery."""
    out_dir = Path(out_dir)
    files: dict[str, Path] = {}
    if predictions:
        files["predictions"] = result.detections.write_json(out_dir / "predictions.json")
    files["metrics"] = out_dir / summary_name
    failed: dict[str, str] = {}

    def summary() -> None:
        doc = {**(meta or {}), **result.to_dict(), "files": {k: v.name for k, v in files.items()}}
        write_json(files["metrics"], doc | ({"plot_errors": failed} if failed else {}), indent=2)

    summary()
    for name, draw in _pictures(result, out_dir, plots, source, worst):
        try:
            written = draw()
        except Exception as e:  # a picture is never worth the numbers
            log.warning("could not draw %s: %s: %s", name, type(e).__name__, e)
            failed[name] = f"{type(e).__name__}: {e}"
            continue
        if written:
            files[name] = written
    summary()
    return files


def _pictures(
    result: EvalResult, out_dir: Path, plots: bool, source: DetectionSplit | None, worst: int
) -> list[tuple[str, Callable[[], Path | None]]]:
    """``(name, draw)`` of every picture the report holds (``draw`` returns its path)."""
    from detkit.eval import plots as p  # matplotlib: lazily

    out: list[tuple[str, Callable[[], Path | None]]] = []
    if plots and result.voc is not None:  # detailed runs
        out.append(("pr_curves", lambda: p.plot_pr_curves(
            result.pr50_by_label(), result.class_names, result.stats["mAP50"],
            out_dir / "pr_curves.png")))  # fmt: skip
    if plots and result.confusion is not None:
        out.append(("confusion_matrix", lambda: p.plot_confusion_matrix(
            result.confusion, result.class_names, out_dir / "confusion_matrix.png",
            conf=result.confusion_conf, iou=result.confusion_iou)))  # fmt: skip
    if plots and result.errors is not None:
        out.append(("errors", lambda: p.plot_errors(result.errors, out_dir / "errors.png")))
    if plots and result.thresholds is not None:
        out.append(("pr_f1", lambda: p.plot_pr_f1(result.thresholds, out_dir / "pr_f1.png")))
        out.append(("calibration", lambda: p.plot_calibration(
            result.thresholds, out_dir / "calibration.png")))  # fmt: skip
    if worst and source is not None:
        out.append(("worst", lambda: (
            out_dir / "worst" if write_gallery(result, source, out_dir / "worst", worst)
            else None)))  # fmt: skip
    return out


def write_gallery(result: EvalResult, source: DetectionSplit, out_dir: Path, n: int) -> list[Path]:
    """The worst-images gallery at the F1-optimal threshold (the confusion matrix's without one);
    returns the PNGs written (none without an error breakdown)."""
    if result.errors is None or result.errors.classified is None or result.coco_gt is None:
        return []
    best = result.thresholds.best.get("all") if result.thresholds is not None else None
    conf = best.conf if best is not None else result.confusion_conf
    truth = {int(i): result.coco_gt.imgToAnns.get(i, []) for i in result.coco_gt.getImgIds()}
    items = image_errors(result.errors.classified, result.results, truth, conf)
    names = dict(zip(result.label_cat_ids(), result.class_names, strict=True))
    return write_worst_images(items, source, names, out_dir, n, conf)
