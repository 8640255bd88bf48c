"""Console output: log lines that never break a progress bar, and bars that suit the stream."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


class BarSafeHandler(logging.StreamHandler):
    """A ``StreamHandler`` that writes through ``tqdm.write``: open bars are cleared, the line
    printed, the bars redrawn below it. Without a bar it prints as a plain handler does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def ensure_handler(quiet: bool = False) -> None:
    """Give the ``detkit`` logger a stderr handler (INFO, the message alone) when neither it nor
    the root logger has one, so library users see the log; ``quiet=True`` adds none."""
    logger = logging.getLogger("detkit")
    if quiet or logger.handlers or logging.getLogger().handlers:
        return
    handler = BarSafeHandler()
    handler.set_name("detkit-default")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def configure_cli_logging() -> None:
    """The CLI's logging: INFO and above, the message alone, on stderr through a
    :class:`BarSafeHandler` (a no-op when the root logger is configured already)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[BarSafeHandler()])


class LineProgress(tqdm):
    """tqdm for a stream that is not a terminal: whole lines, never ``\\r``, and a final line
    on close (unless ``leave=False``). Takes tqdm's arguments; a line every ``every`` of the total
    but at most one per ``min_interval`` seconds, or, without a total, every ``interval`` s."""

    def __init__(
        self,
        *args: Any,
        every: float = 0.1,
        min_interval: float = 10.0,
        interval: float = 60.0,
        **kwargs: Any,
    ) -> None:
        self._every, self._min_interval, self._interval = every, min_interval, interval
        self._next_n, self._last_line = math.inf, time.monotonic()
        self._closing = self._ready = False
        # tqdm then calls display() at every update; display() decides what to write
        super().__init__(*args, **{**kwargs, "mininterval": 0, "miniters": 1})
        self._next_n, self._ready = self._after(self.n), True

    def _after(self, n: float) -> float:
        """The count at which the next line is due (inf without a total)."""
        if not self.total:
            return math.inf
        step = max(self.total * self._every, 1)
        return (math.floor(n / step) + 1) * step

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line when one is due (see the class); tqdm's clear requests are ignored."""
        if msg is not None or not self._ready or (self.disable and not self._closing):
            return True  # a clear request, tqdm's first display, or a closed bar
        now = time.monotonic()
        since = now - self._last_line
        if self.total:  # a kept bar's last line is written by close(), with the final postfix
            last = self.n >= self.total and self.leave is not False
            due = self.n >= self._next_n and since >= self._min_interval and not last
        else:
            due = since >= self._interval
        if due or self._closing:
            self.fp.write(self.__str__() + "\n")
            self.fp.flush()
            self._last_line, self._next_n = now, self._after(self.n)
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: every line written is whole."""

    def moveto(self, n: int) -> None:
        """No cursor movement on a file."""

    def close(self) -> None:
        """Write the final line (``leave=True``) and finish."""
        if self.disable:
            return
        leave = self.leave if self.leave is not None else self.pos == 0
        if leave and self.n > 0:
            self._closing = True
            self._ema_dt = lambda: None  # as tqdm's close: the overall rate, not the recent one
            self.display()
        self.leave = False  # tqdm's own close would add a newline or a "\r"
        self.disable = True
        self._decr_instances(self)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A progress bar for ``iterable`` (tqdm's arguments): tqdm's bar on a terminal (a TTY or a
    notebook), a :class:`LineProgress` on a log file or pipe. ``disable=True`` gives a silent bar."""
    isatty = getattr(kwargs.get("file") or sys.stderr, "isatty", None)
    terminal = kwargs.get("disable") or "ipykernel" in sys.modules or bool(isatty and isatty())
    return (tqdm if terminal else LineProgress)(iterable, **kwargs)
