"""Structured logs: `key=value` text for people, one JSON object a line for machines.

Every line a replica writes is a log record with its time, API and replica,
and the request id of the request being served when it was written: the
replica's own lines, the predictor's `logging` calls and `print()`s (stdout at
info, stderr at warning), and library warnings (`warnings.warn`). A request's
id follows it into the predictor's threads (serving.predict runs `predict` in
a copy of the request's context); a batch serves many requests, so lines
written inside a batched `predict` carry none.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import sys
import threading
import time
import warnings
from typing import Any, TextIO

LOGGER = logging.getLogger("serving")
PREDICTOR_LOGGER = logging.getLogger("predictor")  # what the predictor prints
# Fields a record may carry besides its message; they become key=value pairs or JSON keys.
FIELDS = ("api", "replica", "method", "path", "status", "duration_ms", "request_id", "pid")
REPLICA_ENV = "STACK_REPLICA"  # the replica's name as `stack status` shows it (set by the target)
# The request being served, for every line written while serving it.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("stack_request_id", default=None)


def _stamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None)
        line = f"{_stamp(record.created)} {record.levelname:<7} {record.getMessage()}"
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k in FIELDS if (v := getattr(record, k, None)) is not None})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class ContextFilter(logging.Filter):
    """Stamps every record with the API, the replica and the request being served."""

    def __init__(self, api: str | None, replica: str | None) -> None:
        super().__init__()
        self.api = api
        self.replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "api", None) is None:
            record.api = self.api
        if getattr(record, "replica", None) is None:
            record.replica = self.replica
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class LineWriter(io.TextIOBase):
    """A stand-in for sys.stdout / sys.stderr: each line written becomes one log record.

    Lines are collected per thread (two threads printing at once never mix into
    one line); a partial line is written out on flush().
    """

    def __init__(self, logger: logging.Logger, level: int, original: TextIO) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._original = original
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler, subprocess: the real stream's descriptor
        return self._original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def write(self, text: str) -> int:
        if getattr(self._local, "emitting", False):  # a handler writing to us: straight through
            return self._original.write(text)
        pending = getattr(self._local, "pending", "") + text
        *lines, rest = pending.split("\n")
        self._local.pending = rest
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._emit(pending)

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line:
            return
        self._local.emitting = True
        try:
            self._logger.log(self._level, line)
        finally:
            self._local.emitting = False


def replica_name() -> str | None:
    """The replica's name: set by the local target; on Nomad its allocation's short id (as `stack status`
    shows it); in a container its host name (the container's short id)."""
    if os.environ.get(REPLICA_ENV):
        return os.environ[REPLICA_ENV]
    if os.environ.get("NOMAD_ALLOC_ID"):
        return os.environ["NOMAD_ALLOC_ID"][:8]
    return os.environ.get("HOSTNAME") or None


def setup(level: str = "info", fmt: str = "text", api: str | None = None, capture: bool = False) -> None:
    """Log records to stderr as text or JSON lines; `capture`: the predictor's prints and Python's
    warnings become records too (a replica; not a process that only imports `serving`)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    stream = sys.__stderr__ if isinstance(sys.stderr, LineWriter) else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(api, replica_name()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate our per-request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if capture:
        PREDICTOR_LOGGER.setLevel(logging.INFO)  # prints show at any log_level, as they would on a terminal
        logging.captureWarnings(True)
        warnings.formatwarning = _one_line_warning
        if not isinstance(sys.stdout, LineWriter) and sys.stdout is not None:
            sys.stdout = LineWriter(PREDICTOR_LOGGER, logging.INFO, sys.stdout)
        if not isinstance(sys.stderr, LineWriter) and sys.stderr is not None:
            sys.stderr = LineWriter(PREDICTOR_LOGGER, logging.WARNING, sys.stderr)


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """`file:line: Category: message`, without the source line Python adds below it (one record, one line)."""
    return f"{filename}:{lineno}: {category.__name__}: {message}"
