"""Write an evaluation to disk: COCO results JSON, a JSON summary of every number, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detkit.eval.evaluate import EvalResult


def write_report(
    result: EvalResult, out_dir: str | Path, meta: dict[str, Any] | None = None, plots: bool = True
) -> dict[str, Path]:
    """Save one evaluation in ``out_dir``.

    Files: ``predictions.json`` (COCO results: the dataset's category ids, xywh orig px; any
    COCO tool can rescore it), ``metrics.json`` (``meta`` plus :meth:`EvalResult.to_dict`:
    the 12 COCO numbers, VOC mAP, per-class AP, the confusion matrix, images/s),
    and, when ``plots`` and the result is detailed, ``pr_curves.png`` and
    ``confusion_matrix.png``.

    Args:
        result: from :func:`detkit.eval.evaluate`.
        out_dir: an existing folder.
        meta: extra entries for the summary (weights, dataset, thresholds).
        plots: draw the PNGs.

    Returns:
        Name -> path of every file written.
    """
    from detkit.eval.plots import plot_confusion_matrix, plot_pr_curves  # matplotlib: lazily

    out_dir = Path(out_dir)
    files = {"predictions": out_dir / "predictions.json", "metrics": out_dir / "metrics.json"}
    files["predictions"].write_text(json.dumps(result.results), encoding="utf-8")
    if plots and result.voc is not None:
        files["pr_curves"] = plot_pr_curves(
            result.voc, result.class_names, out_dir / "pr_curves.png"
        )
    if plots and result.confusion is not None:
        files["confusion_matrix"] = plot_confusion_matrix(
            result.confusion,
            result.class_names,
            out_dir / "confusion_matrix.png",
            conf=result.confusion_conf,
            iou=result.confusion_iou,
        )
    summary = {**(meta or {}), **result.to_dict(), "files": {k: v.name for k, v in files.items()}}
    files["metrics"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return files
