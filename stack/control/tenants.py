"""Named keys enforced stack-wide: who may call what, how often, and how much at once (`gateway.keys`).

Traefik's own rate and in-flight limiters count per router in memory (traefik#13706): a key calling two
APIs, or one API through a splitter, would get each limit once per router. So the gateway asks the
controller instead, once per request (Traefik's `forwardAuth`, `GET /__stack/auth/<router>` with the
request's headers, no body: the router of an API or a splitter), and the controller answers from one place:

- 401 JSON: no key, or one the stack does not know;
- 403 JSON: a key whose `apis` does not list this API (or splitter);
- 429 JSON `{"error", "key", "limit": "rate" | "concurrency"}` with `Retry-After` in seconds: over the key's
  token bucket (`rate`, `burst`), or `concurrency` requests already in flight over the whole stack;
- 200 with `X-Stack-Lease`: the request goes on to a replica. A key with a concurrency limit holds a lease
  until the replica that answers it releases it (`POST /__stack/release/<lease>`, before its answer
  leaves: the client's next request finds the slot free). Replicas report the leases they hold on their
  /healthz (the liveness probes, every 2 s; on Nomad the controller lists the allocations to ask from its
  catalogue); a lease no replica has reported for `grace` seconds (its replica died with it, or the request
  never reached one) is let go; one nothing ever reports lapses after `LEASE_TTL`. Other keys get the
  lease "-".

The keys come from the stack's keys file (serving.keys: the same file the replicas read), looked at
again at most every `CHECK_EVERY` seconds: a `stack up` that changes a key's limits applies without a
restart. The key itself is never logged and never a metric label; its name is.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from serving.keys import LEASE_HEADER, ApiKeys, KeyEntry, find_key
from serving.leases import RELEASE  # a replica's release of a lease: RELEASE/<lease>
from stack.control.autoscale.config import AutoscalerConfig
from stack.routes import AUTH
from stack.splits import split_router

NO_LEASE = "-"
LEASE_TTL = 600.0  # seconds after which a lease never released lapses: the last resort, whatever the reports
GRACE = 5.0  # default seconds a lease may go unreported (its request still on its way to a replica)
FRESH = 10.0  # seconds a replica's report of its leases counts (a replica that stopped answering: gone)
CHECK_EVERY = 0.5  # seconds between looks at the keys


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Limits:
    """One named key's state: its token bucket and its leases."""

    entry: KeyEntry
    bucket: _Bucket | None = None
    leases: dict[str, float] = field(default_factory=dict)  # lease -> when it lapses


class Tenants:
    def __init__(
        self,
        read: Callable[[], list[KeyEntry]],
        routers: Mapping[str, tuple[str, list[str]]] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        grace: float = GRACE,
    ) -> None:
        self._read = read  # the keys file's entries now
        self.grace = grace  # seconds a lease may go unreported (a target whose replicas are asked later: more)
        # router -> (the API's or splitter's name, the APIs it sends to): a key that may call the splitter, or
        # every API it sends to, may call it
        self.routers = dict(routers or {})
        self.clock = clock
        self._entries: list[KeyEntry] = []
        self._next_check = -math.inf
        self._state: dict[str, _Limits] = {}  # key name -> its limits' state
        self._lease_of: dict[str, str] = {}  # lease -> key name
        self._reports: dict[str, tuple[float, frozenset[str]]] = {}  # replica URL -> (when, the leases it holds)
        self._ids = itertools.count(1)
        self._prefix = hashlib.blake2b(str(time.time()).encode(), digest_size=4).hexdigest()
        self.refused = Counter(
            "stack_key_refused",
            "Requests the gateway refused for a named key, by API and reason (forbidden, rate, concurrency).",
            ["api", "key", "reason"],
            registry=registry,
        )

    # -- the keys ------------------------------------------------------------------------

    def entries(self) -> list[KeyEntry]:
        now = self.clock()
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY
            with contextlib.suppress(OSError, ValueError):  # a half-written file keeps the keys read last
                self._entries = self._read()
            names = {e.name for e in self._entries if e.name}
            for gone in [n for n in self._state if n not in names]:
                for lease in self._state.pop(gone).leases:
                    self._lease_of.pop(lease, None)
        return self._entries

    @property
    def active(self) -> bool:
        """Any named key: then every request is checked here."""
        return any(e.name for e in self.entries())

    # -- a request -----------------------------------------------------------------------

    def check(self, router: str, headers: Any) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """(status, JSON body or None, headers) for one request to `router`'s API or splitter."""
        api, members = self.routers.get(router, (router, [router]))
        entries = self.entries()
        entry = find_key(headers, entries)
        if entry is None:
            body = {"error": "missing or unknown API key"}
            return 401, body, {"WWW-Authenticate": "Bearer"}
        if not entry.name:  # an unnamed key (gateway.api_keys): no limits
            return 200, None, {LEASE_HEADER: NO_LEASE}
        name = entry.name
        if entry.apis is not None and api not in entry.apis and not all(m in entry.apis for m in members):
            self.refused.labels(api, name, "forbidden").inc()
            return 403, {"error": f"key {name} may not call {api}", "key": name}, {}
        now = self.clock()
        state = self._state.get(name)
        if state is None or state.entry != entry:
            state = self._state[name] = _Limits(entry, leases=state.leases if state else {})
        self._lapse(state, now)
        if entry.concurrency is not None and len(state.leases) >= entry.concurrency:
            self.refused.labels(api, name, "concurrency").inc()
            message = f"key {name} has {entry.concurrency} request(s) in flight, its concurrency limit"
            return 429, {"error": message, "key": name, "limit": "concurrency"}, {"Retry-After": "1"}
        if entry.rate is not None:
            wait = self._take(state, entry, now)
            if wait > 0:
                self.refused.labels(api, name, "rate").inc()
                message = f"key {name} is over its rate ({_rate(entry.rate)}, burst {entry.bucket})"
                retry = str(max(1, math.ceil(wait)))
                return 429, {"error": message, "key": name, "limit": "rate"}, {"Retry-After": retry}
        lease = NO_LEASE
        if entry.concurrency is not None:
            lease = f"{self._prefix}-{next(self._ids)}"
            state.leases[lease] = now + LEASE_TTL
            self._lease_of[lease] = name
        return 200, None, {LEASE_HEADER: lease}

    def release(self, lease: str) -> bool:
        name = self._lease_of.pop(lease, None)
        state = self._state.get(name) if name is not None else None
        return state is not None and state.leases.pop(lease, None) is not None

    def seen(self, replica: str, leases: list[str]) -> None:
        """A replica's report of the leases it holds; leases no fresh report holds past `grace` are let go."""
        now = self.clock()
        self._reports[replica] = (now, frozenset(leases))
        fresh = [(at, held) for at, held in self._reports.values() if now - at <= FRESH]
        for url in [u for u, (at, _held) in self._reports.items() if now - at > FRESH]:
            del self._reports[url]
        for lease, name in list(self._lease_of.items()):
            granted = self._state[name].leases[lease] - LEASE_TTL  # a lease lapses LEASE_TTL after it is given
            if now - granted < self.grace:
                continue
            # every replica answering now has reported since the lease was given, and none holds it
            if all(at >= granted + self.grace for at, _held in fresh) and not any(lease in held for _at, held in fresh):
                self.release(lease)

    def in_flight(self, name: str) -> int:
        state = self._state.get(name)
        return len(state.leases) if state else 0

    def _take(self, state: _Limits, entry: KeyEntry, now: float) -> float:
        """Take a token; the seconds until one is there when there is none (0: taken)."""
        assert entry.rate is not None
        size = float(entry.bucket)
        bucket = state.bucket
        if bucket is None:
            bucket = state.bucket = _Bucket(size, now)
        bucket.tokens = min(size, bucket.tokens + (now - bucket.at) * entry.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / entry.rate

    def _lapse(self, state: _Limits, now: float) -> None:
        for lease in [lease for lease, until in state.leases.items() if until <= now]:
            del state.leases[lease]
            self._lease_of.pop(lease, None)


def _rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:g}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:g}/m"
    return f"{per_second * 3600:g}/h"


def keys_in(path: str | Path) -> Callable[[], list[KeyEntry]]:
    """The keys of a keys file the controller reads (its target mounts or renders it), followed as the replicas
    follow it (serving.keys.ApiKeys: read again when it changes, the last good read kept); no file yet: none."""
    followed: list[ApiKeys] = []

    def read() -> list[KeyEntry]:
        if not followed:
            try:
                followed.append(ApiKeys([], str(path)))
            except ValueError:  # not written yet
                return []
        return followed[0].current_entries()

    return read


def routers_of(config: AutoscalerConfig) -> dict[str, tuple[str, list[str]]]:
    """Each router of the stack's APIs and splitters -> (its name, the APIs it sends to)."""
    routers = {api.router: (api.name, [api.name]) for api in config.routed}
    for splitter in config.splitters:
        routers[split_router(config.project, splitter.name)] = (splitter.name, [api for api, _ in splitter.weights])
    return routers


def tenant_routes(tenants: Tenants) -> list[web.RouteDef]:
    """forwardAuth's endpoint and the replicas' releases, on the controller's gateway-facing app."""

    async def auth(request: web.Request) -> web.Response:
        status, body, headers = tenants.check(request.match_info["router"], request.headers)
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    async def release(request: web.Request) -> web.Response:
        tenants.release(request.match_info["lease"])
        return web.Response(status=204)

    return [
        web.route("*", AUTH + "/{router}", auth),
        web.post(RELEASE + "/{lease}", release),
    ]
