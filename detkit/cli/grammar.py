"""One grammar on every verb: ``key=value`` is ``--key value`` wherever the flag exists
(Ultralytics' ``imgsz``, ``model=best.pt``, ``source=img.jpg`` too); other pairs stay config
overrides, or, for a verb without overrides, are an error with "did you mean"."""

from __future__ import annotations

import argparse
import re

from detkit.config import ALIASES, ConfigError, did_you_mean

_PAIR = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$", re.DOTALL)
_CLI_ALIASES = {**ALIASES, "agnostic_nms": "agnostic", "save_crop": "save_crops"}
TRUE = {"true", "yes", "1", "on"}
FALSE = {"false", "no", "0", "off", ""}


def _flags(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Optional arguments of a verb by key: ``--max-det`` -> ``max_det``."""
    return {
        opt[2:].replace("-", "_"): action
        for action in sub._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }


def _as_flag(opt: str, action: argparse.Action, key: str, value: str) -> list[str]:
    """``--flag value`` (or ``--flag`` alone for a switch, nothing for a false switch)."""
    if action.nargs == 0:
        if value.lower() in TRUE:
            return [opt]
        if value.lower() in FALSE:
            return []
        raise ConfigError(f"{key}={value}: expected true or false")
    if action.nargs in ("+", "*"):
        return [opt, *(v.strip() for v in value.strip("[]").split(",") if v.strip())]
    return [opt, value]


def pairs_to_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Rewrite ``key=value`` arguments of ``argv`` (verb first) as the verb's flags; ConfigError
    when a pair matches no flag of a verb that takes no ``key=value`` overrides."""
    if not argv or argv[0].startswith("-"):
        return argv
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if (sub := subs.choices.get(argv[0])) is None:
        return argv
    flags = _flags(sub)
    takes_overrides = any(a.dest == "overrides" for a in sub._actions)
    out, rest = [argv[0]], argv[1:]
    for i, token in enumerate(rest):
        before = rest[i - 1] if i else ""
        previous = flags.get(before[2:].replace("-", "_")) if before.startswith("--") else None
        match = _PAIR.match(token)
        # a pair right after an option that takes a value is that value
        if token == "--" or match is None or (previous is not None and previous.nargs != 0):
            out.append(token)
            continue
        key, value = match.groups()
        key = _CLI_ALIASES.get(key, key)
        if key == "model" and value.endswith((".pt", ".onnx")) and "weights" in flags:
            key = "weights"  # Ultralytics: model=best.pt
        if key == "source" and "source" not in flags:  # the positional SOURCE
            out.append(value)
        elif key in flags:
            out += _as_flag(f"--{key.replace('_', '-')}", flags[key], key, value)
        elif takes_overrides:
            out.append(token)
        else:
            # the near names when there are some; the verb's keys only when none is near
            hint = did_you_mean(key, set(flags)) or f"; keys: {', '.join(sorted(flags))}"
            raise ConfigError(f"{argv[0]}: unknown key {key!r}{hint}")
    return out
