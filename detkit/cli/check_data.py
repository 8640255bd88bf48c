"""``detkit check-data``: printing over :func:`detkit.api.check_data`."""

from __future__ import annotations

import argparse

from detkit.cli.common import check_keys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        aliases=["check_data"],
        help="check a dataset: report, statistics, class and box-size plots, augmented samples",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="experiment YAML, data YAML or data config name (default configs/default.yaml)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. root=/data/voc")
    p.add_argument("--split", nargs="+", default=["train", "val"], choices=["train", "val"])
    p.add_argument("--show-aug", type=int, default=0, metavar="N", help="save N augmented samples")
    p.add_argument(
        "--epoch", type=int, default=0, help="epoch whose augmentations --show-aug draws"
    )
    p.add_argument("--name", default="", help="output folder name under runs/check_data/")
    p.set_defaults(func=run, check=check)


def check(args: argparse.Namespace) -> None:
    """The overrides' names, types and use by check-data, before torch is imported."""
    if "=" in (args.config or ""):  # only overrides were given
        args.overrides, args.config = [args.config, *args.overrides], None
    check_keys("check_data", args)


def run(args: argparse.Namespace) -> int:
    from detkit.api import check_data
    from detkit.core.io import next_run_dir, removed_if_left_empty
    from detkit.data.stats import format_statistics

    out = next_run_dir("runs/check_data", args.name) if args.name else None
    with removed_if_left_empty(out):
        found = check_data(args.config, args.overrides, splits=tuple(args.split), out=out,
                           show_aug=args.show_aug, epoch=args.epoch)  # fmt: skip
    print(found.report)
    for split, stats in found.stats.items():
        print(format_statistics(stats, f"{split} ({found.data_format})"))
    if found.augmented is not None:
        print(f"augmented samples: {found.augmented}")
    print(f"saved report, statistics and pictures in {found.out}")
    return 0
