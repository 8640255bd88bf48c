"""Write an evaluation to disk: COCO results JSON, a JSON summary of every number, PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detkit.eval.evaluate import EvalResult
from detkit.eval.gallery import ImageSource, image_errors, write_worst_images
from detkit.io import write_json


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

    Args:
        result: from :func:`detkit.eval.evaluate`.
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
    from detkit.eval.plots import (  # matplotlib: lazily
        plot_calibration,
        plot_confusion_matrix,
        plot_errors,
        plot_pr_curves,
        plot_pr_f1,
    )

    out_dir = Path(out_dir)
    files: dict[str, Path] = {}
    if predictions:
        files["predictions"] = write_json(out_dir / "predictions.json", result.results)
    files["metrics"] = out_dir / summary_name  # written last, naming every file
    if plots and result.voc is not None:  # detailed runs
        files["pr_curves"] = plot_pr_curves(
            result.pr50_by_label(), result.class_names, result.stats["mAP50"],
            out_dir / "pr_curves.png",
        )  # fmt: skip
    if plots and result.confusion is not None:
        files["confusion_matrix"] = plot_confusion_matrix(
            result.confusion,
            result.class_names,
            out_dir / "confusion_matrix.png",
            conf=result.confusion_conf,
            iou=result.confusion_iou,
        )
    if plots and result.errors is not None:
        files["errors"] = plot_errors(result.errors, out_dir / "errors.png")
    if plots and result.thresholds is not None:
        files["pr_f1"] = plot_pr_f1(result.thresholds, out_dir / "pr_f1.png")
        files["calibration"] = plot_calibration(result.thresholds, out_dir / "calibration.png")
    if worst and source is not None:
        gallery = write_gallery(result, source, out_dir / "worst", worst)
        if gallery:
            files["worst"] = out_dir / "worst"
    summary = {**(meta or {}), **result.to_dict(), "files": {k: v.name for k, v in files.items()}}
    write_json(files["metrics"], summary, indent=2)
    return files


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
