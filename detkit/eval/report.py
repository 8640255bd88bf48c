"""Write an evaluation to disk: COCO results JSON, a JSON summary of every number, PNG plots."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detkit.core.io import write_json
from detkit.eval.gallery import ImageSource, image_errors, write_worst_images
from detkit.eval.runner import EvalResult

log = logging.getLogger(__name__)


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    meta: dict[str, Any] | None = None,
    plots: bool = True,
    source: ImageSource | None = None,
    worst: int = 0,
    predictions: bool = True,
    summary_name: str = "metrics.json",
) -> dict[str, Path]:
    """Save one evaluation in ``out_dir``.

    Files: ``predictions.json`` (COCO results: the dataset's category ids, xywh orig px; any
    COCO tool can rescore it), ``metrics.json`` (``meta`` plus :meth:`EvalResult.to_dict`:
    the 12 COCO numbers, VOC mAP, per-class AP, the confusion matrix, the error breakdown,
    images/s), and, when ``plots`` and the result is detailed, ``pr_curves.png``,
    ``confusion_matrix.png``, ``errors.png``, ``pr_f1.png`` and ``calibration.png``; and the
    ``worst/`` gallery.

    The summary (``metrics.json``) is written before any picture, and again after them with the
    files that were drawn: a plot that fails (its error is logged and listed under ``plot_errors``) or a
    crash while drawing never costs the numbers. Every file is written atomically.

    Args:
        result: from :func:`detkit.eval.runner`.
        out_dir: an existing folder.
        meta: extra entries for the summary (weights, dataset, thresholds).
        plots: draw the PNGs.
        source: the evaluated split (loads images for the gallery).
        worst: draw this many of the images with the most error weight into ``worst/`` (see
            :mod:`detkit.eval.gallery`; needs ``source`` and a detailed result; 0: none).
        predictions: write ``predictions.json``.
        summary_name: the JSON summary's file name (a training run folder: ``best_metrics.json``
            beside ``metrics.csv``).

    Returns:
        Name -> path of every file written.
    """
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
    result: EvalResult, out_dir: Path, plots: bool, source: ImageSource | None, worst: int
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


def write_gallery(result: EvalResult, source: ImageSource, out_dir: Path, n: int) -> list[Path]:
    """The worst-images gallery at the F1-optimal threshold (the confusion matrix's without one).

    Returns:
        The PNGs written (none when the result has no error breakdown).
    """
    if result.errors is None or result.errors.classified is None or result.coco_gt is None:
        return []
    best = result.thresholds.best.get("all") if result.thresholds is not None else None
    conf = best.conf if best is not None else result.confusion_conf
    truth = {int(i): result.coco_gt.imgToAnns.get(i, []) for i in result.coco_gt.getImgIds()}
    items = image_errors(result.errors.classified, result.results, truth, conf)
    cats = result.cat_ids if result.cat_ids is not None else range(len(result.class_names))
    names = dict(zip(cats, result.class_names, strict=True))
    return write_worst_images(items, source, names, out_dir, n, conf)
