"""Where a replica says why it stopped, for whoever runs it.

A replica that cannot start (its predictor failed, a port in use) or that found itself stuck
(serving.health) writes the reason as JSON (`{"error": ..., "pid": ..., "time": ...}`) to the file its
runner named in `STACK_STARTUP_ERROR_FILE`: the local supervisor reads it instead of parsing log text
(which changes with log_format). A value ending in `/` names a directory shared by many replicas (Compose
mounts one into every replica): the file is then `<directory>/<hostname>.json`, the hostname being the
container's short id, which is how `stack status` finds it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

LOGGER = logging.getLogger("serving")
STARTUP_ERROR_ENV = "STACK_STARTUP_ERROR_FILE"


def report_startup_error(message: str) -> None:
    """Write why this replica cannot start where its runner asked for it (no-op otherwise)."""
    path = os.environ.get(STARTUP_ERROR_ENV)
    if not path:
        return
    if path.endswith("/"):
        path = f"{path}{socket.gethostname()}.json"
    try:
        temp = Path(f"{path}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"error": message, "pid": os.getpid(), "time": time.time()}))
        os.replace(temp, path)
    except OSError as exc:
        LOGGER.warning(f"cannot write the start-up error to {path}: {exc}")


def read_exit_reason(path: Path) -> str | None:
    """The reason a replica wrote there, if it did."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None
