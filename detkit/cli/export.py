"""``detkit export``: printing over :func:`detkit.inference.export.export_checked`."""

from __future__ import annotations

import argparse

from detkit.cli.common import add_weights, fraction, pick_weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or OpenVINO")
    add_weights(p)
    p.add_argument(
        "--format", default="onnx", choices=["onnx", "torchscript", "openvino"],
        help="onnx (.onnx), torchscript (.torchscript) or openvino (<name>_openvino_model/)",
    )  # fmt: skip
    p.add_argument("--output", help="file to write (default: next to the weights)")
    p.add_argument("--img-size", type=int, help="input side (default: training's)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size without --dynamic")
    p.add_argument("--nms", action="store_true", help="c·p, threshold and NMS inside the graph")
    p.add_argument("--conf", type=fraction, help="score threshold baked in with --nms (0.25)")
    p.add_argument("--iou", type=fraction, help="NMS IoU baked in with --nms")
    p.add_argument("--max-det", type=int, help="detections per image with --nms")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS with --nms")
    p.add_argument("--opset", type=int, help="ONNX opset (17)")
    p.add_argument(
        "--no-check", action="store_true", help="skip comparing onnxruntime with PyTorch"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.inference.export import export_checked

    weights = pick_weights(args.weights)
    given = {"conf": args.conf, "iou": args.iou, "max_det": args.max_det, "opset": args.opset}
    given |= {"nms": args.nms or None, "agnostic": args.agnostic or None}  # ONNX's only
    options = {"img_size": args.img_size, "format": args.format, "dynamic": args.dynamic,
               "batch": args.batch, **{k: v for k, v in given.items() if v is not None}}  # fmt: skip
    # the export takes its place only once its runtime agrees with PyTorch
    path, report = export_checked(weights, args.output, check=not args.no_check, **options)
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    print(f"exported {weights} -> {path} ({size_mb:.1f} MiB)")
    if report:
        print(report)
    return 0
