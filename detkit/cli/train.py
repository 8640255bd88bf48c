"""``detkit train``: over :func:`detkit.api.train` / :func:`detkit.api.resume`: train a detector,
or resume / extend a run (also under torchrun)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector (key=value overrides, e.g. epochs=50; weights=best.pt or "
        "model=best.pt starts from a trained detector, freeze=backbone|neck|N)",
    )
    p.add_argument("--config", help="experiment YAML (default configs/default.yaml)")
    p.add_argument(
        "--resume",
        help="continue a run from its last.pt; overrides such as epochs=N (to extend a finished "
        "run) or max_steps=0 may follow. 'auto' (with name=...): continue "
        "<project>/<name>/last.pt if it exists, else start there (for torchrun --max-restarts "
        "and requeued jobs)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (same as device=...)")
    p.add_argument(
        "--keys", action="store_true", help="list every config key with its default, and exit"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=50 lr=0.01")
    p.set_defaults(func=run, check=check)


def check(args: argparse.Namespace) -> None:
    """The whole config of a new run, or a resume's overrides' names and types, before torch is
    imported; ``resume=true`` becomes ``--resume`` of the newest last.pt, ``--device`` a key."""
    from detkit.api import AUTO
    from detkit.cli.common import newest_weights
    from detkit.cli.grammar import FALSE, TRUE
    from detkit.config import ConfigError, check_overrides, load_config

    args.overrides += [f"train.device={args.device}"] if args.device else []
    if isinstance(args.resume, str) and args.resume.lower() in TRUE | FALSE:
        project = load_config(args.config, args.overrides).train.project
        asked, args.resume = args.resume.lower() in TRUE, None
        if asked:
            args.resume = str(newest_weights(project, "last.pt"))
            print(f"resume=true: continuing the newest last.pt, {args.resume}")
    if args.resume and args.resume != AUTO:
        if args.config:
            raise ConfigError(
                "--config and --resume do not mix: a resumed run keeps its own config"
            )
        check_overrides(args.overrides)  # what a resume cannot apply needs the saved config
    else:
        load_config(args.config, args.overrides)


def run(args: argparse.Namespace) -> int:
    from detkit.api import train
    from detkit.config import all_keys
    from detkit.engine.safety import LoaderWorkerError, NonFiniteError, TrainingInterrupted

    if args.keys:
        for key, default, kind in all_keys():
            print(f"{key} = {default!r}  ({kind})")
        return 0
    try:
        run_dir = train(args.config, args.overrides, resume=args.resume or None)
    except TrainingInterrupted as e:
        if e.checkpoint:
            print(f"stopped; continue with: detkit train --resume {e.checkpoint}", file=sys.stderr)
        return 128 + e.signum
    except (NonFiniteError, LoaderWorkerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if run_dir is not None:  # None on DDP ranks other than 0
        if (best := run_dir / "best.pt").is_file():
            note = f"best weights: {best}"
        elif (last := run_dir / "last.pt").is_file():  # stopped before any evaluation
            note = f"no evaluation yet, so no best.pt; continue with --resume {last}"
        else:
            note = "no weights written"
        print(f"run folder: {run_dir}  ({note})")
    return 0
