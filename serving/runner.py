"""Run one worker: listen, load the predictor, serve, drain on SIGTERM.

The socket opens before the predictor loads so `/healthz` answers during a
slow model load while `/readyz` still says 503. On SIGTERM or Ctrl-C:
readiness turns 503 at once, the worker keeps serving for `drain_delay` (the
router needs a moment to notice), then stops listening and gives in-flight and
streaming requests up to `grace_period` before it exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from serving.app import Replica
from serving.config import ServingConfig
from serving.exit_reason import report_startup_error
from serving.loader import StartupError
from serving.protocol_errors import JsonErrorRunner

LOGGER = logging.getLogger("serving")
EXIT_STARTUP_FAILED = 3
EVENT_LOOP_ENV = "STACK_EVENT_LOOP"  # auto (uvloop when installed) | asyncio
# Set by `stack serve`: print one line for people once the replica is ready (not before it can fail).
BANNER_ENV = "STACK_SERVE_BANNER"
QUIET_SECONDS = 1.0  # no new request for this long after the drain delay: the router has let go


async def serve(
    config: ServingConfig, reuse_port: bool = False, ready_dir: Path | None = None, workers: int = 1
) -> int:
    try:
        replica = Replica(config, ready_dir=ready_dir, workers=workers)
    except ValueError as exc:  # a configuration the replica cannot start with (an unreadable keys file)
        LOGGER.error(str(exc))
        report_startup_error(str(exc))
        return EXIT_STARTUP_FAILED
    runner = JsonErrorRunner(
        replica.make_app(), handle_signals=False, access_log=None, shutdown_timeout=config.grace_period
    )
    await runner.setup()
    try:
        await _listen(runner, config, reuse_port)
    except StartupError as exc:
        LOGGER.error(str(exc))
        report_startup_error(str(exc))
        await runner.cleanup()
        return EXIT_STARTUP_FAILED

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    code = await _load(replica, config, stop)
    if code == 0 and not stop.is_set():
        LOGGER.info(
            f"ready: api {config.api} at http://{_display_host(config.host)}:{config.port}", extra={"pid": os.getpid()}
        )
        if os.environ.get(BANNER_ENV):
            print(
                f"Serving API {config.api} at http://{_display_host(config.host)}:{config.port}/  "
                "(POST / to predict; Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )
        await stop.wait()
    if code == 0:
        await _drain(replica, config, stop)
    await runner.cleanup()
    await replica.close()
    if code == 0:
        LOGGER.info("stopped", extra={"pid": os.getpid()})
    return code


async def _listen(runner: web.AppRunner, config: ServingConfig, reuse_port: bool) -> None:
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {config.port} on {config.host} is already in use; choose another with --port"
            ) from exc
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc


async def _load(replica: Replica, config: ServingConfig, stop: asyncio.Event) -> int:
    # On a predictor thread (daemon: a SIGTERM during a long load exits without waiting for it).
    load = replica.load()
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    await asyncio.wait([load, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not load.done():
        # Stopped during a load: a thread cannot be interrupted, so leave without it. It is a
        # daemon thread, so the interpreter exits now instead of waiting for the load to end.
        LOGGER.info("stopped while the predictor was loading")
        return 0
    try:
        replica.set_predictor(load.result())
    except StartupError as exc:
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, SyntaxError):
            LOGGER.debug("traceback", exc_info=cause)
            LOGGER.error(f"predictor failed to start: {exc}", exc_info=cause)
        else:
            LOGGER.error(f"predictor failed to start: {exc}")
        report_startup_error(str(exc))
        return EXIT_STARTUP_FAILED
    return 0


async def _drain(replica: Replica, config: ServingConfig, stop: asyncio.Event) -> None:
    replica.start_draining()
    LOGGER.info(
        f"draining: readiness is 503; serving {config.drain_delay:g}s more (longer while requests still arrive), "
        f"then up to {config.grace_period:g}s for {replica.in_flight} in-flight request(s)",
        extra={"pid": os.getpid()},
    )
    stop.clear()  # a second signal cuts the drain delay short
    quiet = asyncio.ensure_future(_until_quiet(replica, config))
    second = asyncio.ensure_future(stop.wait())
    await asyncio.wait({quiet, second}, timeout=config.drain_delay + config.grace_period, return_when="FIRST_COMPLETED")
    for task in (quiet, second):
        task.cancel()
    await asyncio.gather(quiet, second, return_exceptions=True)


async def _until_quiet(replica: Replica, config: ServingConfig) -> None:
    """Serve for drain_delay, then on until no request has arrived for QUIET_SECONDS.

    A router notices a failing readiness probe only after its probe interval,
    retries and config reload; as long as it still sends requests, closing the
    socket would turn each of them into an error.
    """
    await asyncio.sleep(config.drain_delay)
    while time.monotonic() - replica.last_request_at < QUIET_SECONDS:
        await asyncio.sleep(0.1)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run the server on uvloop when it is installed (a faster event loop: more requests per core),
    else on asyncio's own; `STACK_EVENT_LOOP=asyncio` chooses asyncio's (for comparisons)."""
    if os.environ.get(EVENT_LOOP_ENV, "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def run_single(config: ServingConfig) -> int:
    return run(serve(config))
