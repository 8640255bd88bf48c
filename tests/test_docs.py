"""The README and the docs/ pages stay true without running anything heavy: every relative link
and #anchor resolves, every command line in a ```bash block parses with today's verbs, flags
and config keys, and the README front page stays a front page (#22 item 9). The Python blocks
run in tests/test_readme.py; the ONNX Runtime snippet in tests/test_export.py."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from detkit.cli import build_parser
from detkit.cli.grammar import pairs_to_flags
from detkit.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
# what a command may fail on here: files the example names that this checkout does not hold
_ABSENT = ("not found", "no such file", "does not exist", "no runs/", "missing")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFKC", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file.relative_to(ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: {broken}"


def _command_lines(page: Path) -> list[str]:
    """Each ``detkit <verb>`` / ``python tools/<verb>.py`` line of the page's bash blocks
    (continuations joined, comments and the torchrun launcher in front dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            match = re.search(r"(?:^|\s)(detkit|(?:python )?tools/\w+\.py)(\s.*)?$", line)
            if match and not line.startswith("#"):
                out.append(line[match.start(1) :].removesuffix("&").strip())
    return out


_TOOL_VERB = {"eval": "eval", "check_data": "check-data"}
COMMANDS = [(p, line) for p in PAGES for line in _command_lines(p)]


def test_the_pages_hold_the_commands_they_are_checked_by():
    assert len(COMMANDS) > 40
    assert {p.name for p, _ in COMMANDS} >= {"README.md", "training.md", "datasets.md"}


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p.name}:{c}" for p, c in COMMANDS])
def test_every_command_line_parses_with_todays_keys(page, line):
    words = shlex.split(line)
    if words[0] == "python":
        words = words[1:]
    if words[0].startswith("tools/"):
        tool = Path(words[0]).stem
        words = ["detkit", _TOOL_VERB.get(tool, tool), *words[1:]]
    parser = build_parser()
    try:
        argv = pairs_to_flags(parser, words[1:])
        args, extra = parser.parse_known_args(argv)
        assert (all("=" in a for a in extra) and hasattr(args, "overrides")) or not extra, extra
        if extra:
            args.overrides = [*args.overrides, *extra]
        if (check := getattr(args, "check", None)) is not None:
            check(args)  # the verb's keys and values, as `detkit` checks them before running
    except SystemExit as e:  # argparse: an unknown flag or a bad value
        pytest.fail(f"{page.name}: `{line}` does not parse (exit {e.code})")
    except (ConfigError, FileNotFoundError) as e:
        if not any(word in str(e).lower() for word in _ABSENT):
            pytest.fail(f"{page.name}: `{line}`: {e}")


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    setup = re.findall(r"^make \w[\w-]*", text, flags=re.M)
    assert setup == ["make demo", "make test"]  # the two set-up commands, nothing else to run
    # the front table names every peer and the Ultralytics release bench_peer pins
    pinned = re.search(
        r'ULTRALYTICS = "ultralytics==([\d.]+)"', (ROOT / "bench/bench_peer.py").read_text()
    )
    assert "## Against YOLOv8n, YOLO11n and YOLO26n" in text and f"Ultralytics {pinned[1]}" in text
    image = ROOT / "docs/images/demo.png"
    assert f"]({image.relative_to(ROOT)})" in text and image.stat().st_size < 200_000
