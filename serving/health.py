"""Is this replica still doing its job? What `/healthz` answers, and what a stuck replica does about it.

A replica can stop serving while its process lives on. Three ways are noticed here, once it is ready:

- **a stuck predict**: a call on a predictor thread (or an `async def predict` on the event loop) running
  longer than `stuck_after` — a wedged CUDA call, a deadlocked tokenizer. With one thread every later
  request waits behind it; `timeout` answers them 504, forever.
- **a blocked event loop**: an `async def predict` that never awaits. Nothing is answered at all, not
  even `/healthz`: a watchdog thread notices that the loop's heartbeat stopped for `health_check_timeout`.
- **the predictor's own check**: an optional `check_health(self)` (plain or async, as Ray Serve's), called
  every `health_check_period`; raising, returning False or not returning within `health_check_timeout`
  makes the replica unhealthy.

Stuck: the replica answers every request it holds with a 504 JSON carrying its request id (nobody is
left hanging), refuses new ones with a 503, says why on `/healthz` (503) for the stack's controller,
which takes it out of the routes and replaces it — and if nobody has within `LINGER` seconds, exits
with `EXIT_STUCK` so that whatever runs it starts it again. A blocked loop cannot do any of that: the
watchdog thread writes the 504s straight onto the requests' connections and exits the process.

Unhealthy: `/healthz` and `/readyz` answer 503 with the reason; in-flight requests finish, and the
controller replaces the replica gracefully (drain, then stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from serving.config import ServingConfig
from serving.exit_reason import report_startup_error
from serving.flights import Flight
from serving.loader import LoadedPredictor
from serving.predict import Predictions

LOGGER = logging.getLogger("serving")
EXIT_STUCK = 70  # a replica that found itself stuck exits with this (sysexits' EX_SOFTWARE)
HEARTBEAT = 0.5  # seconds between the event loop's heartbeats
WATCH_EVERY = 1.0  # seconds between looks for a stuck predict
LINGER = 5.0  # seconds a stuck replica waits for its controller to replace it before it exits itself

ALIVE, STUCK, UNHEALTHY = "alive", "stuck", "unhealthy"


class Health:
    """One worker's liveness: its state, the checks that change it, and what a stuck worker does."""

    def __init__(self, config: ServingConfig, predictions: Predictions, workers: int = 1) -> None:
        self.config = config
        self.predictions = predictions
        self.workers = workers  # with several worker processes a stuck one leaves at once (its supervisor restarts it)
        self.status = ALIVE
        self.reason = ""
        self.beat = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = threading.Event()
        self._checker: ThreadPoolExecutor | None = None  # one thread for a plain check_health
        self._check_running: Future[Any] | None = None
        self.exit_process = _exit  # how a stuck replica leaves (a test serving it in its own process keeps it)
        # The loop beats several times within health_check_timeout, so a busy loop is never taken for a blocked one.
        self._beat_every = min(HEARTBEAT, config.health_check_timeout / 4)

    @property
    def alive(self) -> bool:
        return self.status == ALIVE

    def document(self) -> tuple[int, dict[str, Any]]:
        """`/healthz`: 200 while alive (with readiness beside, so one probe tells both), else 503 and why."""
        body: dict[str, Any] = {"status": self.status}
        if self.reason:
            body["reason"] = self.reason
        return (200 if self.alive else 503), body

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, predictor: LoadedPredictor) -> None:
        """The predictor is loaded: from now on a stuck replica is noticed (a long model load is not stuck)."""
        loop = asyncio.get_running_loop()
        self.beat = time.monotonic()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._watch())]
        check = getattr(predictor.instance, "check_health", None)
        if callable(check):
            self._tasks.append(loop.create_task(self._check_health(check)))
        threading.Thread(target=self._watchdog, name="loop-watchdog", daemon=True).start()

    async def stop(self) -> None:
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)

    # -- the checks ------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(self._beat_every)

    async def _watch(self) -> None:
        limit = self.config.stuck_after
        while self.alive:
            await asyncio.sleep(WATCH_EVERY)
            oldest = self.predictions.oldest_predict()
            if oldest is not None and time.monotonic() - oldest >= limit:
                running = time.monotonic() - oldest
                self.stuck(f"stuck: predict running for {running:.0f}s (stuck_after {limit:g}s)")

    async def _check_health(self, check: Any) -> None:
        period, deadline = self.config.health_check_period, self.config.health_check_timeout
        while self.alive:
            await asyncio.sleep(period)
            problem = await self._run_check(check, deadline)
            if problem is not None and self.alive:
                # In-flight requests finish; readiness turns 503 and the controller drains and replaces it.
                self.status, self.reason = UNHEALTHY, f"unhealthy: {problem}"
                LOGGER.error(f"check_health failed: {problem}; this replica is unhealthy and will be replaced")

    async def _run_check(self, check: Any, deadline: float) -> str | None:
        """None when healthy, else why not."""
        try:
            if inspect.iscoroutinefunction(check):
                result = await asyncio.wait_for(check(), deadline)
            else:
                if self._check_running is not None and not self._check_running.done():
                    return f"check_health() has not returned for over {deadline:g}s"
                if self._checker is None:
                    self._checker = ThreadPoolExecutor(1, thread_name_prefix="check-health")
                self._check_running = self._checker.submit(check)
                result = await asyncio.wait_for(asyncio.wrap_future(self._check_running), deadline)
        except TimeoutError:
            return f"check_health() did not return within {deadline:g}s"
        except Exception as exc:
            LOGGER.debug("check_health raised", exc_info=exc)
            return f"check_health() raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        if result is False:
            return "check_health() returned False"
        return None

    # -- stuck -----------------------------------------------------------------------------

    def stuck(self, reason: str) -> None:
        """Give up: answer what this replica holds, say why on /healthz, and leave if nobody replaces it."""
        if self.status == STUCK:
            return
        self.status, self.reason = STUCK, reason
        LOGGER.error(
            f"{reason}: answering {len(self.predictions.flights)} in-flight request(s) with 504; "
            "this replica is taken out of the routes and replaced"
        )
        self.predictions.flights.abandon(reason)
        linger = LINGER if self.workers == 1 else 0.2
        asyncio.get_running_loop().call_later(linger, self.exit_process, reason)

    def _watchdog(self) -> None:
        """On its own thread: the event loop's heartbeat stopped for health_check_timeout (an async predict
        that blocks the loop): answer the requests the replica holds from here, then exit."""
        limit = self.config.health_check_timeout
        while not self._stopped.wait(self._beat_every):
            silent = time.monotonic() - self.beat
            if silent < limit:
                continue
            reason = f"stuck: event loop blocked for {silent:.0f}s (health_check_timeout {limit:g}s)"
            answered = sum(_answer_from_thread(flight, reason) for flight in self.predictions.flights.all())
            LOGGER.error(f"{reason}: answered {answered} in-flight request(s) with 504 and exiting")
            self.exit_process(reason)
            return


def _answer_from_thread(flight: Flight, reason: str) -> bool:
    """Write a 504 JSON onto a request's connection from outside the (blocked) event loop, then shut the
    connection: the loop cannot answer, the client must not hang. True when the answer was written."""
    transport = flight.request.transport
    raw = transport.get_extra_info("socket") if transport is not None else None
    if raw is None:
        return False
    try:
        fd = raw.fileno()
    except (OSError, ValueError):
        return False
    written = False
    if not flight.responding:
        body = json.dumps(
            {"error": f"this replica is {reason}; it is being replaced: retry", "request_id": flight.request_id}
        ).encode()
        head = (
            "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {flight.request_id}\r\nConnection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            written = os.write(fd, head + body) > 0
    with contextlib.suppress(OSError):
        connection = socket.socket(fileno=os.dup(fd))
        connection.shutdown(socket.SHUT_RDWR)
        connection.close()
    return written


def _exit(reason: str) -> None:
    """Leave at once, whatever the event loop or a predictor thread is doing (they cannot be interrupted)."""
    LOGGER.error(f"exiting with code {EXIT_STUCK}: {reason}")
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    report_startup_error(reason)  # where its runner asked for it (the local supervisor's error file)
    os._exit(EXIT_STUCK)
