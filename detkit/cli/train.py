"""``detkit train``: train a detector, or resume / extend a run."""

from __future__ import annotations

import argparse

from detkit.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector (key=value overrides, e.g. epochs=50)")
    p.add_argument("--config", default=None, help="experiment YAML (default configs/default.yaml)")
    p.add_argument("--resume", default=None, help="continue a run from its last.pt")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=50 lr=0.01")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
