"""``detkit infer``: detect objects in images and save annotated copies and JSON."""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import cv2

from detkit.cli.common import newest_weights, unique_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def register(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
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
    out = None if args.no_save else unique_dir(Path("runs/infer"), args.name or "exp")
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
