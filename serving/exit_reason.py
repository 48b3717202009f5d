"""Where a replica says why it stopped, for whoever runs it.

A replica that cannot start (its predictor failed, a port in use) or that found itself stuck
(serving.health) writes the reason as JSON (`{"error": ..., "pid": ..., "time": ...}`) to the file its
runner named in `STACK_STARTUP_ERROR_FILE`: the local supervisor reads it instead of parsing log text
(which changes with log_format).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

LOGGER = logging.getLogger("serving")
STARTUP_ERROR_ENV = "STACK_STARTUP_ERROR_FILE"


def report_startup_error(message: str) -> None:
    """Write why this replica cannot start where its runner asked for it (no-op otherwise)."""
    path = os.environ.get(STARTUP_ERROR_ENV)
    if not path:
        return
    try:
        temp = Path(f"{path}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"error": message, "pid": os.getpid(), "time": time.time()}))
        os.replace(temp, path)
    except OSError as exc:
        LOGGER.warning(f"cannot write the start-up error to {path}: {exc}")
