"""``detkit summary``: printing over :func:`detkit.api.model_summary`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary", help="per-layer output volume, parameters and FLOPs of a model config"
    )
    p.add_argument("config", help="model config: a name under configs/models/ or a YAML path")
    p.add_argument("--img-size", type=int, nargs="+", default=[320], help="S, or H W (px)")
    p.add_argument("--num-classes", type=int, default=80, help="C (default 80, as COCO)")
    p.add_argument("--depth", type=int, help="merge layers below this name depth (1: parts)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the model section")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detkit.api import model_summary

    if len(args.img_size) not in (1, 2):
        raise ValueError(f"--img-size takes S or H W, got {args.img_size}")
    size = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    result = model_summary(
        args.config, size, args.num_classes, depth=args.depth, overrides=args.overrides
    )
    print(result.table())
    return 0
