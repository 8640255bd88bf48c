"""What keeps a run from being lost: the errors that stop it (each saying what to do) and
graceful SIGINT/SIGTERM (the loop stops after the current update and saves)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Too many updates in a row were non-finite, or weights to save are not finite."""


class LoaderWorkerError(RuntimeError):
    """A data-loader worker process died (killed for memory, or crashed in native code)."""


def worker_died(e: Exception) -> Exception:
    """``e`` with what to do when it says a loader worker died; other errors unchanged.

    Example:
        >>> str(worker_died(RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed. ")))[:28]
        'a data-loader worker died (D'
    """
    text = str(e)
    if isinstance(e, ConnectionError | EOFError):  # a batch cut off by its worker's death
        text = f"the connection to a DataLoader worker broke: {type(e).__name__}: {e}"
    elif "DataLoader worker" not in text:
        return e
    return LoaderWorkerError(
        f"a data-loader worker died ({text.strip()}). This is usually the kernel killing it for "
        "memory: lower workers=, batch= or img_size=, or set workers=0 to load in the main "
        "process (slower, and any error then shows its own traceback). Continue with "
        "--resume <run folder>/last.pt"
    )


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM (``signum``) stopped training after the resumable ``checkpoint``."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(f"{signal.Signals(signum).name}: resumable checkpoint {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


class StopSignals:
    """Context manager: the first SIGINT/SIGTERM sets :attr:`received` instead of killing the
    process; another more than :attr:`REPEAT_S` later raises KeyboardInterrupt (sooner: a copy,
    ignored). Main thread only (elsewhere a no-op); the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 2.0  # a signal this soon after the first is a copy of it, not a second request

    def __init__(self) -> None:
        self.received: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received is not None:
            if now - self._first_at < self.REPEAT_S:
                return  # the same stop, delivered twice (e.g. to the group and by the launcher)
            raise KeyboardInterrupt  # a second signal: stop now, without saving
        self.received, self._first_at = signum, now
        log.warning("%s received: saving a resumable checkpoint after the current step (send it "
                    "again to stop at once)", signal.Signals(signum).name)  # fmt: skip
