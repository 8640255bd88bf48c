"""Library logging: report lines reach a plain Python session, never override a user's setup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging
from detkit.logs import ensure_handler
{setup}
ensure_handler(quiet={quiet})
logging.getLogger("detkit.engine.trainer").info("epoch 1 mAP50 0.5")
logging.getLogger("detkit.engine.trainer").debug("hidden")
"""


def _run(setup: str = "", quiet: bool = False) -> str:
    code = SCRIPT.format(setup=setup, quiet=quiet)
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
        env={"PYTHONPATH": root, "PATH": ""},
    )  # fmt: skip
    return out.stderr


def test_a_plain_session_sees_the_report_lines():
    assert _run() == "epoch 1 mAP50 0.5\n"


def test_quiet_and_a_configured_application_are_left_alone():
    assert _run(quiet=True) == ""
    setup = "logging.basicConfig(level=logging.WARNING, format='APP %(message)s')"
    assert _run(setup) == ""  # the application's WARNING level wins; no second handler
