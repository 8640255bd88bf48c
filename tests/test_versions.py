"""Dependency floors: pyproject and the start-up check agree, and old versions are warned about."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from detkit.core import versions
from detkit.core.versions import FLOORS, check_versions, outdated, parse_version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
DISTRIBUTIONS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
}


def test_pyproject_floors_match_the_start_up_check() -> None:
    text = PYPROJECT.read_text()
    deps = re.findall(
        r'^  "([^"]+)",$', text.split("dependencies = [", 1)[1].split("]", 1)[0], re.M
    )
    assert len(deps) >= 9
    floors = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep)
        if m:
            floors[m.group(1).lower()] = parse_version(m.group(2))
    for module, dist in DISTRIBUTIONS.items():
        assert floors[dist] == FLOORS[module][0], dist
    assert floors["torch"] >= (2, 10) and floors["opencv-python-headless"] >= (4, 12)


def test_installed_versions_pass() -> None:
    check_versions.cache_clear()
    assert check_versions() == []


def test_older_versions_are_named_with_the_reason() -> None:
    lines = outdated(
        {"torch": "2.9.1+cpu", "cv2": "4.11.0", "PIL": "11.2.1", "torchvision": "0.25.0"}
    )
    assert len(lines) == 3
    assert lines[0].startswith("torch 2.9.1+cpu < 2.10: ") and "CVE-2025-32434" in lines[0]
    assert "CVE-2025-53644" in lines[1] and "CVE-2025-48379" in lines[2]
    assert outdated({"torch": "2.10.0", "cv2": "4.12.0.88", "PIL": "12.0.0"}) == []


def test_a_start_up_warning_is_logged(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setitem(versions.FLOORS, "torch", ((99, 0), "a test floor"))
    check_versions.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="detkit.core.versions"):
            lines = check_versions()
    finally:
        check_versions.cache_clear()
    assert (
        len(lines) == 1
        and "a test floor" in caplog.text
        and "outdated dependency: torch" in caplog.text
    )
