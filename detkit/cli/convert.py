"""``detkit convert``: rewrite a dataset between COCO, VOC and YOLO (a new folder, checked)."""

from __future__ import annotations

import argparse
from pathlib import Path

from detkit.cli.common import check_keys

FORMATS = ("coco", "voc", "yolo")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a dataset between coco, voc and yolo",
        description="Read SRC (checked as training would read it) and write it to the new "
        "folder OUT. Extra key=value overrides describe SRC's layout, e.g. "
        "voc_train=[VOC2007/trainval] or train_ann=annotations/train.json.",
    )
    p.add_argument(
        "src",
        help="source dataset: a COCO json or an Ultralytics data.yaml (format detected), or a "
        "root folder (VOCdevkit, COCO or YOLO root; then --from is needed)",
    )
    p.add_argument("out", help="destination folder (must not exist)")
    p.add_argument("--from", dest="src_format", choices=FORMATS, help="format of a SRC folder")
    p.add_argument("--to", dest="dst_format", required=True, choices=FORMATS)
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    p.add_argument("--images", default="copy", choices=["copy", "symlink"], help="image files")
    p.add_argument("--data", help="a data config to start from, e.g. coco or voc")
    p.add_argument("overrides", nargs="*", help="data key=value overrides for the source layout")
    p.set_defaults(func=run, check=lambda args: check_keys("convert", args))


def run(args: argparse.Namespace) -> int:
    from detkit.api import convert
    from detkit.data import VOC_CLASSES, format_report

    done = convert(
        args.src, args.dst_format, args.out, src_format=args.src_format, data=args.data,
        overrides=args.overrides, splits=tuple(args.splits), images=args.images,
    )  # fmt: skip
    sources = done["sources"]
    print(format_report(sources[s].report for s in args.splits))
    for split, counts in done["counts"].items():
        dropped = counts["ignored_dropped"]
        note = f", {dropped} crowd/difficult dropped (YOLO cannot mark them)" if dropped else ""
        print(
            f"{split}: {counts['images']} images, {counts['boxes']} boxes, "
            f"{counts['ignored']} crowd/difficult{note}"
        )
    out = Path(args.out)
    names = next(iter(sources.values())).class_names
    print(f"written {args.dst_format} dataset to {out}; train on it with:")
    print(f"  python tools/train.py {_train_overrides(args.dst_format, out, names, VOC_CLASSES)}")
    return 0


def _train_overrides(fmt: str, out: Path, names: list[str], voc_classes: tuple[str, ...]) -> str:
    """The overrides that point training at a converted copy."""
    if fmt == "coco":
        return f"data.format=coco root={out}"  # the default layout: instances_<split>.json
    if fmt == "voc":
        classes = "" if tuple(names) == voc_classes else f" class_names=[{','.join(names)}]"
        return f"data=voc root={out} voc_train=[train] voc_val=[val]{classes}"
    return f"data=yolo root={out}"
