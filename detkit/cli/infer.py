"""``detkit infer``: printing over :func:`detkit.inference.run.infer`."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from detkit.cli.common import add_weights, conf_value, fraction, pick_weights
from detkit.core.deploy import MAX_PIXELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        aliases=["predict"],
        help="detect objects in an image, folder, glob, video or .txt list of paths",
    )
    p.add_argument("source", help="image, folder, glob pattern, video file or .txt list")
    add_weights(p, "checkpoint or export (.onnx, .torchscript, *_openvino_model)")
    p.add_argument(
        "--conf",
        type=conf_value,
        help="score threshold on c·p (default: the checkpoint's, 0.25), or 'best': the "
        "F1-optimal one `detkit eval` stored",
    )
    p.add_argument("--iou", type=fraction, help="NMS IoU threshold")
    p.add_argument("--classes", nargs="+", help="keep these classes (ids or names)")
    p.add_argument("--max-det", type=int, help="detections kept per image")
    p.add_argument("--img-size", type=int, help="network input size")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        help="images per forward pass (default: 16 on a GPU, 1 on a CPU)",
    )
    p.add_argument("--save-txt", action="store_true", help="YOLO txt per image / frame")
    p.add_argument("--save-conf", action="store_true", help="append the score to --save-txt rows")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS: one label per box")
    p.add_argument("--save-crops", action="store_true", help="save each detection's crop")
    p.add_argument("--no-save", action="store_true", help="no annotated images or videos")
    p.add_argument(
        "--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images (width x height)"
    )
    p.add_argument("--name", default="", help="output folder name under --project")
    p.add_argument(
        "--resume", nargs="?", const="", metavar="RUN_DIR",
        help="continue an infer run folder (default: --project/--name, else exp): the inputs "
        "its detections.jsonl holds are skipped, the rest added to detections.json",
    )  # fmt: skip
    p.add_argument("--project", default="runs/infer", help="parent of the output folder")
    p.add_argument("--exist-ok", action="store_true", help="write into --name even if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 when at least one input was read, 1 when none, 130 on Ctrl-C, 143 on
    SIGTERM (both write ``detections.json`` of what was done first)."""
    from detkit.core.io import next_run_dir
    from detkit.inference.inputs import list_sources
    from detkit.inference.predict import Detector
    from detkit.inference.run import Interrupted, check_resumable_run, infer

    weights = pick_weights(args.weights)
    det = Detector.from_checkpoint(
        weights, device=args.device, conf=args.conf, iou=args.iou, max_det=args.max_det,
        img_size=args.img_size, agnostic=args.agnostic,
    )  # fmt: skip
    single = len(list_sources(args.source)[0]) == 1
    resume = args.resume is not None
    if resume:
        out = check_resumable_run(args.resume or Path(args.project) / (args.name or "exp"))
        print(f"resuming {out}")
    else:
        out = next_run_dir(Path(args.project), args.name or "exp", args.exist_ok)

    def count(record: dict) -> None:
        if single and "detections" in record:
            print(f"{record['image']}: {len(record['detections'])} detections")

    stopped: list[int] = []

    def terminate(signum: int, frame: object) -> None:  # kill -TERM: stop as Ctrl-C does
        stopped.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        results = infer(
            args.source, det, out, save=not args.no_save, save_txt=args.save_txt,
            save_conf=args.save_conf, save_crops=args.save_crops, classes=args.classes,
            max_pixels=args.max_pixels, batch=args.batch, resume=resume, on_record=count,
        )  # fmt: skip
    except Interrupted as e:  # the folder is closed: detections.json is written
        print(f"interrupted: {e.results.summary()}", file=sys.stderr)
        return 128 + (stopped[0] if stopped else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if resume:
        added = len(results.records) - results.resumed
        print(f"{results.resumed} input(s) were done before; {added} added")
    if results.skipped:
        listed = ", ".join(s["source"] for s in results.skipped[:5])
        print(f"skipped {len(results.skipped)} unreadable input(s): {listed} (see skipped.json)")
    print(results.summary())
    if not results.records:
        print("error: no input could be read", file=sys.stderr)
        return 1
    if results.hint:
        print(results.hint)
    return 0
