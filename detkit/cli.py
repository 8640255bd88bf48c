"""Command line: ``detkit train|eval|infer`` (and ``tools/*.py``, which forward here).

Argument parsing and printing only; the work is done by the same functions a Python user calls.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from pathlib import Path

import cv2

from detkit.config import ConfigError, config_from_dict, load_config
from detkit.engine.checkpoint import CheckpointError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
log = logging.getLogger("detkit")


def newest_weights(project: str = "runs/train") -> Path:
    """The most recently written ``best.pt`` under ``project``."""
    found = sorted(Path(project).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no --weights given and no {project}/*/best.pt found; train first")
    return found[-1]


def _unique_dir(base: Path, name: str) -> Path:
    for i in range(1, 10_000):
        d = base / (name if i == 1 else f"{name}{i}")
        if not d.exists():
            d.mkdir(parents=True)
            return d
    raise RuntimeError(f"no free folder under {base}")


# -- train -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from detkit.engine.trainer import resume, train

    if args.resume:
        epochs = [o for o in args.overrides if o.startswith(("epochs=", "train.epochs="))]
        if len(epochs) != len(args.overrides):
            raise ConfigError("with --resume only epochs=N may be given (the run's config is kept)")
        n = int(epochs[0].split("=", 1)[1]) if epochs else None
        run_dir = resume(args.resume, epochs=n)
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = train(cfg)
    print(f"run folder: {run_dir}  (best weights: {run_dir / 'best.pt'})")
    return 0


# -- eval ------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
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
    out = _unique_dir(Path("runs/eval"), args.name or weights.parent.name)
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


# -- infer -----------------------------------------------------------------------------------
def list_sources(source: str) -> list[Path]:
    """Images named by SOURCE: a file, a folder (sorted), or a glob pattern."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(
            Path(p)
            for p in glob.glob(source, recursive=True)
            if Path(p).suffix.lower() in IMAGE_SUFFIXES
        )
    if not files:
        raise FileNotFoundError(f"no images found at {source!r}")
    return files


def cmd_infer(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from detkit.predict import Detector

    weights = Path(args.weights) if args.weights else newest_weights()
    det = Detector.from_checkpoint(
        weights,
        device=args.device,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        img_size=args.img_size,
    )
    files = list_sources(args.source)
    out = None if args.no_save else _unique_dir(Path("runs/infer"), args.name or "exp")
    records, failed = [], []
    for path in tqdm(files, desc="infer", unit="img", disable=len(files) < 2):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            failed.append(str(path))
            continue
        d = det.predict(image)
        records.append(
            {
                "image": str(path),
                "detections": [
                    {"box": [round(v, 2) for v in b], "score": round(s, 4), "label": n}
                    for b, s, n in zip(d.boxes.tolist(), d.scores.tolist(), d.names, strict=True)
                ],
            }
        )
        if len(files) == 1:
            print(f"{path}: {d!r}")
        if out is not None:
            target = out / Path(path.name).name  # base name only: never writes outside `out`
            cv2.imwrite(str(target), d.draw(image))
    if failed:
        print(f"skipped {len(failed)} unreadable file(s): {', '.join(failed[:5])}")
    if out is not None:
        (out / "detections.json").write_text(json.dumps(records, indent=1))
        total = sum(len(r["detections"]) for r in records)
        print(f"{total} detections in {len(records)} image(s); annotated images saved to {out}")
    return 0


# -- entry -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detkit", description="detkit object detection")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector (key=value overrides, e.g. epochs=50)")
    p.add_argument("--config", default=None, help="experiment YAML (default configs/default.yaml)")
    p.add_argument("--resume", default=None, help="continue a run from its last.pt")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=50 lr=0.01")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on a dataset split")
    p.add_argument(
        "--weights", default=None, help="checkpoint (default: newest runs/train/*/best.pt)"
    )
    p.add_argument("--name", default="", help="output folder name under runs/eval/")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. split=val conf=0.001")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", help="detect objects in an image, a folder or a glob")
    p.add_argument("source", help="image file, folder or glob pattern")
    p.add_argument(
        "--weights", default=None, help="checkpoint (default: newest runs/train/*/best.pt)"
    )
    p.add_argument("--conf", type=float, default=0.25, help="score threshold on c·p")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=None, help="detections kept per image")
    p.add_argument("--img-size", type=int, default=None, help="network input size")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--name", default="", help="output folder name under runs/infer/")
    p.add_argument("--no-save", action="store_true", help="print detections only")
    p.set_defaults(func=cmd_infer)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; user errors print one line and return 2, never a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
