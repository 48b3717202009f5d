"""What the local fleet keeps of each API: its replicas, each replica slot's failures, its rollout.

`ApiState` says what happened as events (`stack status API`) and keeps the counts `stack status` shows:
restarts, a slot failing to start (three in a row put the API in `error`), a rollout's progress and why
it was rolled back. The fleet (stack.targets.local.fleet) drives it; this module decides nothing about
processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from stack.spec import Api
from stack.spec.units import format_duration
from stack.status import ReplicaState

LOGGER = logging.getLogger("stack.targets.local")
BACKOFF = (1, 2, 4, 8, 16, 30)  # seconds before a slot's next try after failures in a row (30 s for good)
ERROR_AFTER = 3  # a slot's start-up failures in a row that put its API in `error` (it keeps retrying)
CRASH_WINDOW = 30.0  # a ready replica that dies sooner than this after starting counts toward back-off
STARTING, READY, DRAINING = ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING


@dataclass
class Replica:
    id: str
    api: str
    version: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path
    state: ReplicaState = STARTING
    started: float = field(default_factory=time.monotonic)
    slot: int = 0  # its replica slot: for a GPU API the GPU(s) it is pinned to (stack.plan.gpus)
    gpu: str = ""  # those GPUs, as CUDA_VISIBLE_DEVICES names them
    replaced: str = ""  # why the liveness probes had it replaced

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class SlotHealth:
    """One replica slot's recent failures: its own count and back-off, not its API's."""

    failures: int = 0  # start-up failures in a row
    crashes: int = 0  # ready replicas that died soon after starting, in a row
    retry_at: float = 0.0  # monotonic time of its next try
    error: str = ""  # why its last replica failed to start
    replica: str = ""  # that replica

    def back_off(self, count: int) -> float:
        delay = BACKOFF[min(count - 1, len(BACKOFF) - 1)]
        self.retry_at = time.monotonic() + delay
        return delay


@dataclass
class ApiState:
    spec: Api
    version: str
    desired: int
    replicas: list[Replica] = field(default_factory=list)
    restarts: int = 0
    health: dict[int, SlotHealth] = field(default_factory=dict)  # slot -> its failures
    last_kill: str = ""  # why the supervisor last killed one of its replicas (memory), for `stack status`
    counter: int = 0
    events: list[str] = field(default_factory=list)
    manual: bool = False  # `stack scale --force` took the API from the autoscaler until the next `stack up`
    slots: list[list[str]] = field(default_factory=list)  # a GPU API's slots: each one's GPU ids
    previous: tuple[Api, str] | None = None  # while a rollout runs: the spec and version it rolls from
    rollout_started: float = 0.0  # monotonic
    rolled_back: str = ""  # why the last rollout was rolled back (until the next `stack up`)
    rollback_replica: str = ""  # the new replica whose failure rolled it back (its log says more)

    def free_slots(self) -> list[int]:
        """Slots no replica of the current version holds: a GPU API's placed ones, else as many as needed."""
        held = {r.slot for r in self.live() if r.version == self.version}
        count = len(self.slots) if self.slots else max(self.desired, 1)  # a new version's replicas: desired at most
        return [n for n in range(count) if n not in held]

    def next_slot(self) -> int | None:
        """The lowest free slot whose back-off is over."""
        now = time.monotonic()
        return next((n for n in self.free_slots() if self.slot(n).retry_at <= now), None)

    def slot(self, number: int) -> SlotHealth:
        return self.health.setdefault(number, SlotHealth())

    @property
    def failed_slot(self) -> SlotHealth | None:
        """A slot that failed ERROR_AFTER times in a row: the API is in `error` while nothing serves."""
        return next((h for _, h in sorted(self.health.items()) if h.failures >= ERROR_AFTER), None)

    @property
    def error(self) -> str | None:
        failed = self.failed_slot
        if failed is not None:
            return failed.error
        return self.last_kill or None

    @property
    def error_replica(self) -> str:
        failed = self.failed_slot
        return failed.replica if failed is not None else ""

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state != DRAINING]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == READY]

    def serving(self, routed: set[str]) -> list[Replica]:
        """Ready replicas that Traefik confirmed it sends requests to."""
        return [r for r in self.ready() if r.url in routed]

    def event(self, message: str) -> None:
        LOGGER.info(f"{self.spec.name}: {message}")
        self.events = [*self.events[-19:], f"{time.strftime('%H:%M:%S')} {message}"]

    def clear_failures(self) -> None:
        self.health.clear()

    def became_ready(self, replica: Replica) -> None:
        replica.state = READY
        slot = self.slot(replica.slot)
        slot.failures, slot.error = 0, ""
        self.event(f"replica {replica.id} ready after {time.monotonic() - replica.started:.1f}s")

    def replaced(self, replica: Replica, reason: str) -> None:
        """The liveness probes condemned a ready replica: a restart, and why."""
        self.restarts += 1
        replica.replaced = reason
        self.event(f"replica {replica.id} replaced: {reason}")

    def failed_to_start(self, replica: Replica, code: int, why: str | None) -> None:
        """A replica exited before it was ready: its slot backs off (and counts toward `error`)."""
        slot = self.slot(replica.slot)
        slot.failures += 1
        slot.replica = replica.id
        slot.error = why or f"replica {replica.id} exited with code {code} while starting"
        delay = slot.back_off(slot.failures)
        self.event(
            f"replica {replica.id} failed to start (exit {code}, {slot.failures} in a row in its slot): "
            f"{slot.error}; retry in {delay}s, at {_clock(delay)}"
        )

    def exited(self, replica: Replica, code: int, killed: str) -> None:
        """A replica that was ready exited: a restart; one that keeps crashing soon after it started is
        replaced with back-off."""
        self.restarts += 1
        slot = self.slot(replica.slot)
        uptime = time.monotonic() - replica.started
        slot.crashes = slot.crashes + 1 if uptime < CRASH_WINDOW else 1
        slot.replica = replica.id
        delay = slot.back_off(slot.crashes - 1) if slot.crashes > 1 else 0
        if not delay:
            slot.retry_at = 0.0
        wait = f" in {delay}s, at {_clock(delay)} (crashed {slot.crashes} times in a row)" if delay else ""
        self.event(f"replica {replica.id} {killed or f'exited with code {code}'}; replacing it{wait}")

    def rollout_failure(self, updating: bool) -> tuple[str, str] | None:
        """Why the API's rollout must be rolled back, and the new replica to blame; None while it may go on."""
        if not updating or self.previous is None:
            return None
        for _, slot in sorted(self.health.items()):
            if slot.failures >= ERROR_AFTER:
                why = f"replica {slot.replica} failed to start {slot.failures} times in a row: {slot.error}"
                return why, slot.replica
            if slot.crashes >= ERROR_AFTER:
                return f"replica {slot.replica} crashed {slot.crashes} times in a row soon after starting", slot.replica
        deadline = self.spec.update.progress_deadline
        if time.monotonic() - self.rollout_started > deadline:
            ready = sum(1 for r in self.ready() if r.version == self.version)
            starting = [r.id for r in self.live() if r.version == self.version and r.state == STARTING]
            return (
                f"the new version was not ready within {format_duration(deadline)} (update.progress_deadline): "
                f"{ready}/{self.desired} replicas ready",
                starting[0] if starting else "",
            )
        return None

    def roll_back(self, reason: str, replica: str) -> list[Replica]:
        """Back to the version it rolled from; the failed version's replicas, which must go."""
        assert self.previous is not None
        failed = self.version
        leaving = [r for r in self.live() if r.version == failed]
        self.spec, self.version = self.previous
        self.previous = None
        self.clear_failures()
        self.rolled_back, self.rollback_replica = reason, replica
        self.event(f"rolled back from version {failed} to {self.version}: {reason}")
        return leaving


def _clock(delay: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
