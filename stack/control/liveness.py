"""Liveness and readiness from the controller: every replica's `/healthz`, asked over HTTP, the same on every
target that keeps its own replicas (local, Compose; Nomad runs the same check as its own service check).

One probe answers three questions (serving.health): is the replica alive, or stuck or unhealthy and why;
is it ready; which API keys does it apply. The controller asks each replica the fleet lists: a starting
one every `STARTING_EVERY` (it joins the gateway within that of being ready), a serving one every
`EVERY`. Costs nothing inside the replica (no process is started, as Docker's health check did: that cost
6% of a core per idle replica).

What the answers decide (`judge`, a pure function):
- a replica that says it is stuck is replaced at once, killed (it answered what it held already);
- one that says it is unhealthy (its `check_health()`) is replaced gracefully: drained, then stopped;
- one that stops answering leaves the routes after `SUSPECT_AFTER` silent probes (requests stop going to
  it), and is replaced once silent for its `health_check_timeout` plus `MARGIN` (its own watchdog answers
  its requests and exits at `health_check_timeout`; the controller is the backstop for a frozen process).
A replica still starting is the start-up's business (a long model load is not stuck): only ready ones are
judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

LOGGER = logging.getLogger("stack.control")
EVERY = 2.0  # seconds between probes of a serving replica
STARTING_EVERY = 0.25  # ... of a starting one
PROBE_TIMEOUT = 2.0  # one probe's wait for an answer
SUSPECT_AFTER = 2  # silent probes in a row before a replica leaves the routes
MARGIN = 2.0  # seconds past health_check_timeout before the controller replaces a silent replica itself


@dataclass(frozen=True)
class Probed:
    """A replica the fleet wants asked."""

    api: str
    replica: str  # its id, as `stack status` names it
    url: str  # http://HOST:PORT
    serving: bool  # it has been ready: it is judged (a starting one is only asked whether it is ready)
    timeout: float = 10.0  # its API's health_check_timeout
    incarnation: str = ""  # which start of it (a container restarted keeps its name): its probes start over
    judged: bool = True  # False: only asked (its platform replaces it itself: Nomad's own checks)

    @property
    def key(self) -> str:
        return f"{self.replica}@{self.incarnation}" if self.incarnation else self.replica


@dataclass
class Health:
    """What a replica's probes said."""

    answered: float  # monotonic time of its last answer (or of when it was first asked)
    misses: int = 0  # probes in a row without an answer
    ready: bool = False
    status: str = "unknown"  # alive | stuck | unhealthy | unknown (never answered)
    reason: str = ""
    keys: str = ""  # the generation of the API keys file it applies (serving.keys)
    answered_ready: bool = False  # its last answer said ready (kept while it is silent)
    asked: float = 0.0  # monotonic time of its last probe

    @property
    def suspect(self) -> bool:
        """Silent long enough that requests should stop going to it."""
        return self.misses >= SUSPECT_AFTER

    @property
    def routable(self) -> bool:
        """Requests may go to it: not silent, not stuck or unhealthy, and ready when it last answered (a
        replica whose every thread is wedged past its timeout says it is not)."""
        if self.suspect or self.status in ("stuck", "unhealthy"):
            return False
        return self.ready or self.status != "alive"

    @property
    def word(self) -> str:
        """Its health as `stack status` shows it."""
        if self.status in ("stuck", "unhealthy"):
            return self.status
        if self.suspect:
            return "not answering"
        if self.status == "alive":
            return "healthy" if self.ready else "starting"
        return "starting"


@dataclass(frozen=True)
class Decision:
    reason: str  # "stuck: predict running for 45s (stuck_after 30s)"
    kill: bool  # stuck: killed at once; unhealthy: drained and stopped


def judge(probed: Probed, health: Health, now: float) -> Decision | None:
    """Whether a replica must be replaced, and how."""
    if not probed.serving or not probed.judged:
        return None
    if health.status == "stuck":
        return Decision(health.reason or "stuck", kill=True)
    if health.status == "unhealthy":
        return Decision(health.reason or "unhealthy", kill=False)
    silent = now - health.answered
    if silent >= probed.timeout + MARGIN:
        return Decision(f"stuck: not answering its health check for {silent:.0f}s", kill=True)
    return None


Replace = Callable[[Probed, Decision], Awaitable[None]]


@dataclass
class Liveness:
    """The controller's probes: `run` asks the fleet's replicas and calls `replace` on a verdict."""

    targets: Callable[[], list[Probed]]  # the fleet's replicas now
    replace: Replace
    session: aiohttp.ClientSession | None = None
    health: dict[str, Health] = field(default_factory=dict)  # Probed.key -> what its probes said
    replaced: set[str] = field(default_factory=set)  # the keys of replicas already handed to `replace`
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a readiness or suspicion changed
    # A replica's affinity report (serving.affinity) goes here; True: the values it holds changed (routes too).
    on_affinity: Callable[[Probed, dict[str, object]], bool] | None = None
    # The named keys' leases a replica holds (serving.predict.Predictions.holding) go here.
    on_leases: Callable[[Probed, list[str]], None] | None = None

    def of(self, key: str) -> Health | None:
        """What the probes said of a replica (by `Probed.key`)."""
        return self.health.get(key)

    def ask_now(self) -> None:
        """Ask every replica at the next tick (within STARTING_EVERY): something changed they should apply."""
        for health in self.health.values():
            health.asked = 0.0

    def ready(self, key: str) -> bool:
        health = self.health.get(key)
        return health is not None and health.ready and health.status == "alive" and not health.suspect

    def only_silent(self, key: str) -> bool:
        """Ready when it last answered, and since then only silent (not stuck, not unhealthy). When every
        replica of an API is like this, the fleet routes them anyway (a machine too busy to answer probes
        in time is no reason to answer every request 503): Envoy's panic threshold, at 100%."""
        health = self.health.get(key)
        return health is not None and health.suspect and health.status == "alive" and health.answered_ready

    async def run(self, stopping: asyncio.Event) -> None:
        own = self.session is None
        session = self.session or aiohttp.ClientSession()
        try:
            while not stopping.is_set():
                await self.tick(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), STARTING_EVERY)
        finally:
            if own:
                await session.close()

    async def tick(self, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        targets = self.targets()
        known = {t.key for t in targets}
        for gone in [r for r in self.health if r not in known]:
            del self.health[gone]
        self.replaced &= known
        due = [t for t in targets if t.key not in self.replaced and self._due(t, now)]
        if due:
            await asyncio.gather(*(self._probe(session, t) for t in due))
        now = time.monotonic()
        for target in due:
            health = self.health[target.key]
            decision = judge(target, health, now)
            if decision is None:
                continue
            self.replaced.add(target.key)
            LOGGER.warning(f"{target.api}: replacing replica {target.replica}: {decision.reason}")
            try:
                await self.replace(target, decision)
            except Exception:  # the next tick sees it again
                self.replaced.discard(target.key)
                LOGGER.exception(f"{target.api}: could not replace replica {target.replica}")

    def _due(self, target: Probed, now: float) -> bool:
        health = self.health.get(target.key)
        if health is None:
            self.health[target.key] = Health(answered=now)
            return True
        every = EVERY if target.serving and health.ready and not health.suspect else STARTING_EVERY
        return now - health.asked >= every

    async def _probe(self, session: aiohttp.ClientSession, target: Probed) -> None:
        health = self.health[target.key]
        health.asked = time.monotonic()
        before = (health.ready, health.suspect, health.status)
        try:
            async with session.get(
                target.url + "/healthz", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
            ) as response:
                body = await response.json(content_type=None)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            # A replica still starting may not listen yet; only a serving one's silence counts.
            health.misses += 1 if target.serving else 0
            health.ready = health.ready and not health.suspect
        else:
            health.answered, health.misses = time.monotonic(), 0
            health.status = str(body.get("status", "unknown"))
            health.reason = str(body.get("reason", ""))
            health.ready = bool(body.get("ready")) and health.status == "alive"
            health.answered_ready = health.ready
            health.keys = str(body.get("keys", ""))
            leases = body.get("leases")
            if isinstance(leases, list) and self.on_leases is not None:
                self.on_leases(target, [str(lease) for lease in leases])
            report = body.get("affinity")
            if isinstance(report, dict) and self.on_affinity is not None and self.on_affinity(target, report):
                self.changed.set()
        if (health.ready, health.suspect, health.status) != before:
            self.changed.set()
