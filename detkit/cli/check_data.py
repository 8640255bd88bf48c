"""``detkit check-data``: open a dataset's splits, print what the checks found and statistics,
and save pictures of the classes, the box sizes and (``--show-aug N``) augmented samples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detkit.yamlio import load_yaml

SECTIONS = ("data", "model", "train", "eval")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        aliases=["check_data"],
        help="check a dataset: report, statistics, class and box-size plots, augmented samples",
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="experiment YAML, data YAML or data config name (default configs/default.yaml)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. root=/data/voc")
    p.add_argument("--split", nargs="+", default=["train", "val"], choices=["train", "val"])
    p.add_argument("--show-aug", type=int, default=0, metavar="N", help="save N augmented samples")
    p.add_argument(
        "--epoch", type=int, default=0, help="epoch whose augmentations --show-aug draws"
    )
    p.add_argument("--name", default="", help="output folder name under runs/check_data/")
    p.set_defaults(func=run)


def load_any_config(config: str | None, overrides: list[str]):
    """An experiment file, a data file (``configs/data/*.yaml`` or a path) or a data name."""
    from detkit.config import load_config

    if config is None:
        return load_config(None, overrides)
    path = Path(config)
    if path.is_file():
        raw = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        if isinstance(raw, dict) and raw and set(raw) <= set(SECTIONS):
            return load_config(path, overrides)
    return load_config(None, [f"data={config}", *overrides])


def run(args: argparse.Namespace) -> int:
    from detkit.build import build_dataset, build_detection_dataset
    from detkit.data import data_report
    from detkit.data.stats import (
        augmentation_grid,
        dataset_statistics,
        format_statistics,
        plot_box_sizes,
        plot_classes,
    )
    from detkit.engine.runlog import next_run_dir

    if "=" in (args.config or ""):  # only overrides were given
        args.overrides, args.config = [args.config, *args.overrides], None
    cfg = load_any_config(args.config, args.overrides)
    sources = {split: build_dataset(cfg.data, split) for split in args.split}
    out = next_run_dir(Path("runs/check_data"), args.name or cfg.data.format)  # only once it opened
    print(data_report(sources, out, log=False))
    all_stats = {}
    for split, source in sources.items():
        stats = dataset_statistics(source)
        title = f"{split} ({cfg.data.format})"
        print(format_statistics(stats, title))
        plot_classes(stats, title, out / f"{split}_classes.png")
        plot_box_sizes(stats, title, out / f"{split}_box_sizes.png")
        all_stats[split] = {k: v for k, v in stats.items() if not k.startswith("_")}
    (out / "stats.json").write_text(json.dumps(all_stats, indent=1), encoding="utf-8")
    if args.show_aug > 0:
        split = "train" if "train" in sources else args.split[0]
        dataset = build_detection_dataset(cfg, sources[split], train=split == "train")
        grid = augmentation_grid(
            dataset, args.show_aug, sources[split].class_names, out / "augmented.png", args.epoch
        )
        print(f"augmented samples: {grid}")
    print(f"saved report, statistics and pictures in {out}")
    return 0
