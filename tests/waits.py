"""The one way a test waits: poll a condition until it holds, never a fixed sleep; fail naming what it waited for.

A test's outcome must not depend on the machine's load: it waits for the state it needs (a replica ready, a
route applied, a line logged) up to a bound that only a broken stack reaches, and reports what it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT = 30.0  # seconds: a working stack gets there far sooner, even on a loaded two-core machine


def until(
    condition: Callable[[], T], what: str | Callable[[], str], timeout: float = TIMEOUT, every: float = 0.05
) -> T:
    """Call `condition` until it returns something truthy, and return that; after `timeout` seconds fail the
    test with `what` (a callable is asked then, to describe what was seen last). An exception raised by
    `condition` propagates: a check that breaks is not a wait (wrap it in `holds` where "not yet" raises)."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {described}")
        # A check that costs (a `stack status` process) is not run back to back: the wait never takes
        # more than half the machine from the stack it waits for.
        time.sleep(max(every, now - started))


def holds(condition: Callable[[], Any]) -> Callable[[], bool]:
    """`condition`, its exceptions counting as "not yet" (a server still starting refuses connections)."""

    def checked() -> bool:
        try:
            return bool(condition())
        except Exception:
            return False

    return checked


def until_seen(
    read: Callable[[], T], check: Callable[[T], Any], what: str, timeout: float = TIMEOUT, every: float = 0.05
) -> T:
    """Read a value until `check` accepts it, and return that value; on timeout the failure shows the last one
    read (a status, a signal), which is what a reader of a failed run needs first."""
    last: list[T] = []

    def accepted() -> tuple[T] | None:
        last[:] = [read()]
        return (last[0],) if check(last[0]) else None

    return until(accepted, lambda: f"{what}; last seen: {last[0] if last else 'nothing'}", timeout, every)[0]
