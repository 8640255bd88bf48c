"""Command line: ``detkit <verb>`` (and ``tools/<verb>.py``, which forward here): argument parsing
and printing over one library call per verb; nothing heavy is imported until a verb runs. Each verb
is a module with ``register(subparsers)`` (``func``: its ``run(args) -> int``), listed in VERBS."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from detkit.cli.grammar import pairs_to_flags
from detkit.config import ConfigError

VERBS = [
    "train",
    "evaluate",
    "infer",
    "explain",
    "export",
    "summary",
    "anchors",
    "convert",
    "check_data",
]


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose argument errors are one line (``--conf 1.5``: its range, then where the
    usage is) instead of the usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="detkit", description="detkit object detection")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        importlib.import_module(f"detkit.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; user errors print one line and return 2 (a file that cannot be written:
    1), never a traceback. ``key=value`` arguments become the verb's flags (:mod:`.grammar`)."""
    parser = build_parser()
    try:
        argv = pairs_to_flags(parser, list(sys.argv[1:] if argv is None else argv))
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may also follow --options (argparse stops the positional list there)
        pairs = all("=" in a and not a.startswith("-") for a in extra)
        if extra and hasattr(args, "overrides") and pairs:
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if (check := getattr(args, "check", None)) is not None:
            check(args)  # the verb's keys and values, before torch is imported
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from detkit.core.logs import configure_cli_logging

    configure_cli_logging()  # log lines go above an open progress bar, not into it
    from detkit.core.versions import MissingPackage, check_versions
    from detkit.models.checkpoint import CheckpointError

    check_versions()
    try:
        return args.func(args)
    # a missing optional package; any other ImportError is a bug and keeps its traceback
    except (ConfigError, CheckpointError, ValueError, MissingPackage, ModuleNotFoundError,
            OSError) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        # another OSError (a full disk, a read-only or vanished folder): 1, a user error: 2
        return 1 if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
