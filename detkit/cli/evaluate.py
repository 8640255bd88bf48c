"""``detkit eval``: printing over :func:`detkit.api.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from detkit.cli.common import add_weights, check_keys, pick_weights

if TYPE_CHECKING:
    from detkit.api import Evaluation
    from detkit.eval.runner import EvalResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", aliases=["val"], help="COCO/VOC metrics, per-class AP and plots of a checkpoint"
    )
    add_weights(p)
    p.add_argument("--name", default="", help="output folder name under runs/eval/")
    p.add_argument(
        "--exist-ok", action="store_true", help="write into runs/eval/<name> even if it exists"
    )
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the PNGs (PR curves, confusion matrix, errors, worst images); plots=false too",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides, e.g. split=val conf=0.001 data=shapes root=/data/x",
    )
    p.set_defaults(func=run, check=lambda args: check_keys("eval", args))


def run(args: argparse.Namespace) -> int:
    from detkit.api import evaluate
    from detkit.core.io import next_run_dir, removed_if_left_empty

    weights = pick_weights(args.weights)
    out = next_run_dir(Path("runs/eval"), args.name or weights.parent.name, args.exist_ok)
    with removed_if_left_empty(out):
        report = evaluate(weights, args.overrides, out=out, plots=not args.no_plots)
    result, meta = report.result, report.meta
    print(f"{result.summary.rstrip()}\n\n{result.table()}\n")
    print(
        f"mAP50-95 {result.stats['mAP50-95']:.4f}  mAP50 {result.stats['mAP50']:.4f}  "
        f"VOC mAP50 {result.voc.map:.4f} (2007 11-point {result.voc.map07:.4f})  "
        f"{result.num_images} images, {result.images_per_s:.1f} images/s on {meta['device']}"
    )
    if result.errors_skipped:
        print(f"errors: breakdown skipped: {result.errors_skipped}")
    if result.errors is not None:
        e = result.errors
        print(
            f"errors at IoU {e.iou_thresholds[0]:g}: type, count, mAP gained if that type alone "
            f"were fixed (breakdown {e.seconds:.2f} s of {result.eval_seconds:.2f} s)"
        )
        for line in e.lines():
            print(f"  {line}")
    if result.thresholds is not None:
        _print_thresholds(report, weights)
    print(f"saved to {out}: {', '.join(p.name for p in report.files.values())}")
    if (hint := confusion_hint(result)) is not None:
        print(hint)
    return 0


def _print_thresholds(report: Evaluation, weights: Path) -> None:
    """Print the F1-optimal thresholds and the ECE, and where the overall one was stored."""
    thresholds = report.result.thresholds
    names = thresholds.class_names
    per_class = "  ".join(
        f"{names[k]} {op.conf:.3f}" for k, op in thresholds.best.items() if k != "all"
    )
    print(f"calibration: ECE {thresholds.ece:.4f} (calibration.png)")
    if (best := thresholds.best.get("all")) is None:
        return
    print(
        f"best F1 {best.f1:.3f} at conf {best.conf:.3f} (precision {best.precision:.3f}, "
        f"recall {best.recall:.3f}; per class: {per_class})"
    )
    if report.store_error:
        print(f"warning: could not record the threshold beside {weights}: {report.store_error}"
              f"; give it as a number (--conf {best.conf:.3f})", file=sys.stderr)  # fmt: skip
    elif report.stored_in is not None:
        print(f"recorded in {report.stored_in}: `detkit infer --conf best --weights {weights}` "
              f"uses {best.conf:.3f}")  # fmt: skip


def confusion_hint(result: EvalResult) -> str | None:
    """A hint when no detection reached ``cm_conf``: the matrix is then all background."""
    scores = result.detections.scores
    if result.confusion is None or result.confusion[:-1].sum() > 0 or not len(scores):
        return None
    best = float(scores.max())
    return (
        f"note: no detection scored >= cm_conf {result.confusion_conf} (the highest: "
        f"{best:.3f}), so the confusion matrix shows every object as missed; try "
        f"cm_conf={max(best * 0.8, 0.001):.3g}"
    )
