"""``detkit eval``: COCO metrics of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detkit.cli.common import newest_weights, unique_dir
from detkit.config import config_from_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset split")
    p.add_argument(
        "--weights", default=None, help="checkpoint (default: newest runs/train/*/best.pt)"
    )
    p.add_argument("--name", default="", help="output folder name under runs/eval/")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. split=val conf=0.001")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.build import build_dataset
    from detkit.data import DetectionDataset, build_loader, build_transforms
    from detkit.engine.checkpoint import load_checkpoint
    from detkit.eval import evaluate
    from detkit.predict import Detector

    weights = Path(args.weights) if args.weights else newest_weights()
    ckpt = load_checkpoint(weights)
    cfg = config_from_dict(ckpt["config"], args.overrides)
    dataset = build_dataset(cfg.data, cfg.eval.split)
    loader = build_loader(
        DetectionDataset(dataset, build_transforms(cfg.train.img_size, train=False)),
        cfg.train.batch,
        train=False,
        workers=cfg.train.workers,
        seed=0,
    )
    det = Detector.from_checkpoint(
        weights,
        device=cfg.train.device,
        conf=cfg.eval.conf,
        iou=cfg.eval.iou,
        max_det=cfg.eval.max_det,
    )
    det.cat_ids = dataset.cat_ids
    result = evaluate(det, loader, dataset.ann_file, progress=True)
    out = unique_dir(Path("runs/eval"), args.name or weights.parent.name)
    (out / "predictions.json").write_text(json.dumps(result.results))
    (out / "metrics.json").write_text(
        json.dumps(
            {"weights": str(weights), **result.stats, "images_per_s": result.images_per_s}, indent=2
        )
    )
    print(result.summary.rstrip())
    print(
        f"mAP50-95 {result.stats['mAP50-95']:.4f}  mAP50 {result.stats['mAP50']:.4f}  "
        f"({result.images_per_s:.1f} images/s on {det.device})"
    )
    print(f"saved {out / 'metrics.json'} and {out / 'predictions.json'}")
    return 0
