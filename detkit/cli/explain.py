"""``detkit explain IMAGE``: the grid cells, heatmaps and NMS trace behind one image's boxes."""

from __future__ import annotations

import argparse
from pathlib import Path

from detkit.cli.common import add_weights, conf_value, fraction, newest_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="which cell fired for each box, c and c·p heatmaps, the NMS trace"
    )
    p.add_argument("image", help="an image file")
    add_weights(p)
    p.add_argument("--conf", type=conf_value, help="score threshold (the checkpoint's), or 'best'")
    p.add_argument("--iou", type=fraction, help="NMS IoU threshold")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--name", default="", help="output folder name under runs/explain/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.core.io import next_run_dir, removed_if_left_empty
    from detkit.inference.predict import Detector

    weights = Path(args.weights) if args.weights else newest_weights()
    det = Detector.from_checkpoint(weights, device=args.device, conf=args.conf, iou=args.iou)
    explanation = det.explain(args.image)
    out = next_run_dir(Path("runs/explain"), args.name or "exp")
    with removed_if_left_empty(out):
        png, js = explanation.save(out, Path(args.image).stem)
    for k in explanation.kept:
        gx, gy = k["cell"]
        print(
            f"{k['class']:<12} {k['score']:.3f}  c {k['c']:.3f}  p {k['p']:.3f}  "
            f"level {k['level']} (stride {k['stride']:g}) cell ({gx}, {gy})"
        )
    print(f"{len(explanation.kept)} kept, {len(explanation.suppressed)} suppressed by NMS")
    print(f"saved {png} and {js}")
    return 0
