"""``detkit anchors``: printing over :func:`detkit.api.anchors` (as YAML for a model config)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anchors", help="k-means anchors (w, h in input px) from the train boxes")
    p.add_argument("--config", help="experiment YAML (default configs/default.yaml)")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels (strides 8/16/32)")
    p.add_argument("--per-level", type=int, default=3, help="anchors per level")
    p.add_argument("--seed", type=int, default=0, help="k-means initialisation seed")
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. data=shapes img_size=320"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from detkit.api import anchors

    found, fit = anchors(
        args.config, args.overrides, levels=args.levels, per_level=args.per_level, seed=args.seed
    )
    print(
        f"# {fit['boxes']} train boxes at img_size {fit['img_size']}: "
        f"mean best IoU {fit['mean_iou']:.3f}, recall at ratio 4 {fit['recall']:.3f}, "
        f"{fit['anchors_per_box']:.2f} anchors per box"
    )
    print(yaml.safe_dump({"anchors": found}, default_flow_style=None))
    return 0
