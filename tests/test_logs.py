"""Library logging: report lines reach a plain Python session, never override a user's setup."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from detkit.core.logs import BarSafeHandler, LineProgress, progress
from detkit.engine.runlog import EpochBar

SCRIPT = """
import logging
from detkit.core.logs import ensure_handler
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


def _log_during_a_bar(handler_class: type[logging.StreamHandler]) -> list[str]:
    """What a stream holds after a tqdm bar on it printed 1 of 4 and a log line came."""
    stream = io.StringIO()
    logger = logging.getLogger(f"detkit.test_bar.{handler_class.__name__}")
    handler = handler_class(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        bar = tqdm(total=4, desc="epoch 1/1", file=stream, mininterval=0)
        bar.update(1)
        logger.info("initial losses: box 1.2")
        bar.update(3)
        bar.close()
    finally:
        logger.removeHandler(handler)
    return re.split(r"[\r\n]", stream.getvalue())


def test_a_log_line_printed_while_a_bar_is_open_stands_on_its_own_line():
    # a plain handler writes the message after the bar's text, on the bar's line
    glued = [p for p in _log_during_a_bar(logging.StreamHandler) if "initial losses" in p]
    assert glued[0].startswith("epoch 1/1:  25%")
    assert "initial losses: box 1.2" in _log_during_a_bar(BarSafeHandler)


def test_the_cli_and_the_default_handler_write_above_bars():
    code = (
        "import logging\nfrom detkit.core.logs import configure_cli_logging, ensure_handler\n"
        "ensure_handler()\nprint(type(logging.getLogger('detkit').handlers[0]).__name__)\n"
        "logging.getLogger('detkit').handlers.clear()\n"
        "configure_cli_logging()\nprint(type(logging.getLogger().handlers[0]).__name__)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
        env={"PYTHONPATH": root, "PATH": ""},
    )  # fmt: skip
    assert out.stdout.split() == ["BarSafeHandler", "BarSafeHandler"]
    cli = (Path(root) / "detkit/cli/__init__.py").read_text()
    assert "configure_cli_logging()" in cli and "basicConfig" not in cli


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    return text.splitlines()


def test_a_bar_on_a_log_file_writes_a_line_every_tenth_and_a_final_one():
    stream = io.StringIO()
    bar = progress(total=100, desc="epoch 2/3", unit="batch", file=stream, min_interval=0)
    assert isinstance(bar, LineProgress)
    for i in range(100):
        bar.update(1)
        bar.set_postfix({"box": f"{i:.3f}"})
    bar.close()
    bar.close()  # a second close writes nothing
    lines = _lines(stream)
    assert [line.split("|")[0] for line in lines] == [
        f"epoch 2/3: {p:>3}%" for p in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    ]
    assert "10/100" in lines[0] and "box=8.000" in lines[0]  # written by the 10th update
    assert "100/100" in lines[-1] and "box=99.000" in lines[-1]  # the final postfix


def test_a_fast_bar_on_a_log_file_writes_only_its_last_line():
    stream = io.StringIO()
    bar = progress(total=500, desc="eval", file=stream)  # min_interval 10 s: never reached
    for _ in range(500):
        bar.update(1)
    bar.close()
    assert len(_lines(stream)) == 1 and "500/500" in stream.getvalue()
    stream = io.StringIO()
    for _ in progress(range(50), desc="eval", leave=False, file=stream):
        pass
    assert stream.getvalue() == ""  # a transient bar leaves nothing in a log
    stream = io.StringIO()
    bar = progress(desc="video.mp4", unit="frame", file=stream, interval=0)  # no total
    bar.update(3)
    bar.close()
    assert [line.split(" [")[0] for line in _lines(stream)] == ["video.mp4: 3frame"] * 2


def test_a_terminal_keeps_the_carriage_return_bar():
    stream = _Terminal()
    bar = progress(total=10, desc="epoch 1/1", file=stream, mininterval=0)
    assert type(bar) is tqdm
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert stream.getvalue().count("\r") >= 10
    silent = progress(range(3), disable=True, file=io.StringIO())
    assert type(silent) is tqdm and list(silent) == [0, 1, 2]


def test_the_training_bar_on_a_log_file_is_one_line_per_epoch(capsys):
    bar = EpochBar(total=40, initial=0, desc="epoch 1/5", images_per_batch=8, disable=False)
    for _ in range(40):
        bar.show(1, {"box": 2.0, "obj": 4.0, "cls": 1.0}, 2, 0.01)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and len(err.splitlines()) == 1
    assert err.startswith("epoch 1/5: 100%") and "box=1.000" in err and "lr=1.00e-02" in err


def _stderr_on_a_terminal(cmd: list[str], cwd: Path) -> str:
    """Run ``cmd`` with stderr on a 160-column pseudo-terminal; its stderr as text."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode()


@pytest.mark.slow
def test_initial_losses_stand_above_the_training_bar_on_a_terminal(tiny_shapes, tmp_path):
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable, str(root / "tools/train.py"), f"root={tiny_shapes}", "num_train=8",
        "num_val=4", "epochs=1", "batch=4", "img_size=64", "workers=0", "device=cpu",
        f"project={tmp_path / 'runs'}", "plots=false",
    ]  # fmt: skip
    pieces = re.split(r"[\r\n]", _stderr_on_a_terminal(cmd, tmp_path))
    initial = [p for p in pieces if "initial losses:" in p]
    assert len(initial) == 1 and initial[0].startswith("initial losses: box ")
    assert any(p.startswith("epoch 1/1:   0%|") for p in pieces)  # the bar was open
    assert any(p.startswith("epoch 1/1: 100%|") for p in pieces)
