"""Library logging: the ``detkit`` logger prints its report lines in a plain Python session too.

The CLI configures logging itself; a user calling ``detkit.train(cfg)`` or ``detkit.evaluate``
from Python or a notebook usually has not, and would then see only progress bars. These
functions give the ``detkit`` logger one stderr handler (INFO, the message alone, as the CLI
prints) only when neither it nor the root logger has a handler, so an application's own logging
setup is never overridden.
"""

from __future__ import annotations

import logging

_HANDLER_NAME = "detkit-default"


def ensure_handler(quiet: bool = False) -> None:
    """Attach the default handler when no logging is configured; ``quiet=True`` adds none."""
    logger = logging.getLogger("detkit")
    if quiet or logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
