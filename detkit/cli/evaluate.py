"""``detkit eval``: COCO and VOC metrics of a checkpoint on a dataset split, with plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from detkit.cli.common import newest_weights, unique_dir
from detkit.config import config_from_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO/VOC metrics, per-class AP and plots of a checkpoint")
    p.add_argument(
        "--weights", default=None, help="checkpoint (default: newest runs/train/*/best.pt)"
    )
    p.add_argument("--name", default="", help="output folder name under runs/eval/")
    p.add_argument("--no-plots", action="store_true", help="skip the PR and confusion PNGs")
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
    from detkit.predict import Detector

    weights = Path(args.weights) if args.weights else newest_weights()
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
        det, loader, dataset.ann_file, detailed=True, cm_conf=e.cm_conf, cm_iou=e.cm_iou
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
    files = write_report(result, out, meta, plots=not args.no_plots)
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
    print(f"saved to {out}: {', '.join(p.name for p in files.values())}")
    return 0
