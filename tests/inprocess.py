"""A replica's aiohttp app served in this process, on a thread with its own event loop.

Tests of the predictor contract use it instead of a subprocess: no interpreter
start per test, and the test can reach into the replica (its in-flight count,
the predictor instance) to wait for a state instead of sleeping. Each replica
has its own metrics registry, so several can run in one process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from aiohttp import web

from serving.app import Replica
from serving.config import BatchingConfig, ServingConfig
from serving.logs import TextFormatter

TIMEOUT = 30.0  # the longest any wait here may take; a hang fails the test instead of stalling the suite


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(TextFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class InProcessReplica:
    def __init__(self, predictor: str | Path, **fields: Any) -> None:
        if isinstance(fields.get("batching"), dict):
            fields["batching"] = BatchingConfig(**fields["batching"])
        fields.setdefault("api", "test")
        fields.setdefault("drain_delay", 0.0)
        self.config = ServingConfig(predictor_path=str(predictor), host="127.0.0.1", port=0, **fields)
        self._capture = _Capture()
        logging.getLogger("serving").addHandler(self._capture)
        logging.getLogger("serving").setLevel(logging.INFO)
        self.replica = Replica(self.config)
        # A stuck replica exits its process (serving.health); here that process is the test's: record it.
        self.exits: list[str] = []
        self.replica.health.exit_process = self.exits.append
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="in-process-replica", daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("the in-process replica did not start")
        if self._error is not None:
            raise self._error

    # -- the server thread -------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.replica.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        predictor = await self.replica.load()
        self.replica.set_predictor(predictor)

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self.replica.close()

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        if not self._loop.is_running():
            self._loop.close()
        logging.getLogger("serving").removeHandler(self._capture)

    # -- what tests use ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance(self) -> Any:
        """The user's predictor object."""
        assert self.replica.predictor is not None
        return self.replica.predictor.instance

    def post(self, path: str = "/", **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return requests.post(self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return requests.get(self.url + path, **kwargs)

    def hung_up(self) -> int:
        """Requests still being handled whose client has closed its connection."""
        handlers = self._runner.server.connections  # type: ignore[union-attr]
        return int(self.call(lambda: sum(1 for h in handlers if h.transport is None)))

    def logs(self) -> str:
        return "\n".join(self._capture.lines)

    def call(self, func: Callable[[], Any]) -> Any:
        """Run `func` on the server's event loop (to read state the loop owns) and return its result."""

        async def run() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(TIMEOUT)
