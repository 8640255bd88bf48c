"""``detkit eval``: COCO and VOC metrics of a checkpoint on a dataset split, with plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detkit.cli.common import pick_weights, unique_dir
from detkit.config import config_from_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO/VOC metrics, per-class AP and plots of a checkpoint")
    p.add_argument(
        "--weights", default=None, help="checkpoint (default: newest runs/train/*/best.pt)"
    )
    p.add_argument("--name", default="", help="output folder name under runs/eval/")
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the PNGs (PR curves, confusion matrix, errors)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides, e.g. split=val conf=0.001 data=shapes root=/data/x",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.build import build_dataset
    from detkit.data import DetectionDataset, build_loader, build_transforms
    from detkit.engine.checkpoint import load_checkpoint
    from detkit.eval import evaluate, write_report
    from detkit.eval.evaluate import error_ious
    from detkit.predict import Detector

    weights = pick_weights(args.weights)
    ckpt = load_checkpoint(weights)
    cfg = config_from_dict(ckpt["config"], args.overrides)
    dataset = build_dataset(cfg.data, cfg.eval.split)
    if list(dataset.class_names) != list(ckpt["class_names"]):
        raise ValueError(
            f"the dataset's classes {dataset.class_names} differ from the checkpoint's "
            f"{ckpt['class_names']}"
        )
    loader = build_loader(
        DetectionDataset(dataset, build_transforms(cfg.train.img_size, train=False)),
        cfg.train.batch,
        train=False,
        workers=cfg.train.workers,
        seed=0,
    )
    e = cfg.eval
    det = Detector.from_checkpoint(
        weights, device=cfg.train.device, conf=e.conf, iou=e.iou, max_det=e.max_det
    )
    det.cat_ids = dataset.cat_ids
    result = evaluate(
        det,
        loader,
        dataset.ann_file,
        detailed=True,
        cm_conf=e.cm_conf,
        cm_iou=e.cm_iou,
        error_ious=error_ious(e.errors),
    )
    out = unique_dir(Path("runs/eval"), args.name or weights.parent.name)
    meta = {
        "weights": str(weights),
        "annotations": str(dataset.ann_file),
        "split": e.split,
        "img_size": cfg.train.img_size,
        "conf": e.conf,
        "iou": e.iou,
        "max_det": e.max_det,
        "device": str(det.device),
    }
    files = write_report(result, out, meta, plots=not args.no_plots, source=dataset, worst=e.worst)
    for fix in result.gt_fixes:
        print(f"note: {fix} (in memory; {dataset.ann_file} is unchanged)")
    print(result.summary.rstrip())
    print()
    print(result.table())
    print()
    voc = result.voc
    print(
        f"mAP50-95 {result.stats['mAP50-95']:.4f}  mAP50 {result.stats['mAP50']:.4f}  "
        f"VOC mAP50 {voc.map:.4f} (2007 11-point {voc.map07:.4f})  "
        f"{result.num_images} images, {result.images_per_s:.1f} images/s on {det.device}"
    )
    if result.errors is not None:
        e = result.errors
        print(
            f"errors at IoU {e.iou_thresholds[0]:g}: type, count, mAP gained if that type alone "
            f"were fixed (breakdown {e.seconds:.2f} s of {result.eval_seconds:.2f} s)"
        )
        for line in e.lines():
            print(f"  {line}")
    if result.thresholds is not None:
        _print_thresholds(result.thresholds, weights, {"annotations": str(dataset.ann_file)})
    print(f"saved to {out}: {', '.join(p.name for p in files.values())}")
    if (hint := confusion_hint(result)) is not None:
        print(hint)
    return 0


def _print_thresholds(report: Any, weights: Path, meta: dict[str, Any]) -> None:
    """Print the F1-optimal thresholds and the ECE; store the overall one in the checkpoint."""
    from detkit.engine.checkpoint import store_thresholds

    per_class = "  ".join(
        f"{report.class_names[k]} {op.conf:.3f}" for k, op in report.best.items() if k != "all"
    )
    print(f"calibration: ECE {report.ece:.4f} (calibration.png)")
    best = report.best.get("all")
    if best is None:
        return
    print(
        f"best F1 {best.f1:.3f} at conf {best.conf:.3f} (precision {best.precision:.3f}, "
        f"recall {best.recall:.3f}; per class: {per_class})"
    )
    try:
        store_thresholds(weights, {**report.to_dict()["best_f1"], **meta})
    except OSError as e:
        print(f"warning: could not store the threshold in {weights}: {e}", file=sys.stderr)
        return
    print(f"stored in {weights}: `detkit infer --conf best` uses {best.conf:.3f}")


def confusion_hint(result: Any) -> str | None:
    """A hint when no detection reached ``cm_conf``: the matrix is then all background."""
    if result.confusion is None or result.confusion[:-1].sum() > 0 or not result.results:
        return None
    best = max(r["score"] for r in result.results)
    return (
        f"note: no detection scored >= cm_conf {result.confusion_conf} (the highest: "
        f"{best:.3f}), so the confusion matrix shows every object as missed; try "
        f"cm_conf={max(best * 0.8, 0.001):.3g}"
    )
