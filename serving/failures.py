"""Exceptions to answers, in one table: the handler of the nearest class in the exception's MRO
decides (as Starlette looks up its exception handlers). An exception no handler knows is a 500 with
its type and message, and its traceback in the log; the client never sees a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from serving.batching import BatchMismatch
from serving.errors import Failure, HTTPError, ModelError
from serving.protocols import OpenAIError


class PredictTimeout(Exception):
    """The request passed its `timeout` before predict answered."""

    def __init__(self, timeout: float, caller: bool = False) -> None:
        if caller:  # the caller's deadline came first (serving.calls' X-Request-Timeout)
            super().__init__(f"the caller's deadline ({timeout:g}s, X-Request-Timeout) passed before predict answered")
        else:
            super().__init__(f"prediction took longer than the timeout of {timeout:g}s")
        self.timeout = timeout


def _http(exc: Any) -> Failure:
    return Failure(exc.status, exc.message, dict(exc.headers))


HANDLERS: dict[type[BaseException], Callable[[Any], Failure]] = {
    HTTPError: _http,
    OpenAIError: lambda exc: Failure(exc.status, exc.message, dict(exc.headers), param=exc.param),
    web.HTTPException: lambda exc: Failure(exc.status, exc.text or exc.reason),
    ModelError: lambda exc: Failure(exc.status, exc.message, logged=exc.status >= 500),
    PredictTimeout: lambda exc: Failure(504, str(exc)),
    BatchMismatch: lambda exc: Failure(500, str(exc), logged=True),
}


def failure_of(exc: BaseException) -> Failure:
    for kind in type(exc).__mro__:
        handler = HANDLERS.get(kind)
        if handler is not None:
            return handler(exc)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Failure(500, message, logged=True)
