"""Model affinity: which replicas each value of an API's affinity key goes to (`networking.affinity`).

Traefik cannot hash a query parameter or a header to a server, but it can match one: the controller
decides where each value goes, and the routes give every value its own router (`Query(model, iris)` or
`Header(X-Model, iris)`) over those replicas. A request without a value, or with one not seen yet, is
balanced as usual; the replica that gets it reports the value, and within a probe (2 s) it is routed.

How a value's replicas are chosen (`assign`, a pure function):
- Rendezvous (highest random weight) hashing ranks the ready replicas for each value; a value's home is
  the first of its ranking. Adding or removing a replica moves only the values that rank it first.
- Bounded: a replica already holding its models' `cache_size` values, or given more than `BOUND` times
  the mean load per replica (and more than one replica's `spread_at`), is skipped for the next value
  (consistent hashing with bounded loads): values never crowd one cache while another has room, and hot
  values never pile up on one replica while others idle. A value keeps its home until that replica is
  past `STICKY` times the mean: loads that wobble move nothing. Light traffic is never moved.
- Load-aware: a value with `load` requests in flight on average wants ceil(load / spread_at) replicas
  and adds the next ones of its ranking that have spare capacity, back to one once it cools (`Spread`:
  at once when hotter, after `COOL_AFTER` seconds when cooler). A stack busy everywhere spreads nothing:
  another copy of a model there would only evict one.

The values come from the replicas' `/healthz` (serving.affinity): what they hold and what they served,
with each value's busy seconds, turned here into mean requests in flight.

How many values one replica holds is its models' `cache_size` where the spec says it; otherwise, for a
replica whose held values are a real cache (a model client, or a predictor's `loaded_models()`), it is
observed: a value evicted while as many others stay means the cache is full at that count
(`observed_capacity`). Loads (requests whose replica did not hold their value) are counted per minute.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BOUND = 1.25  # a replica takes at most this times the mean load (consistent hashing with bounded loads)
STICKY = 1.5  # ... and a value keeps the replica it has until it is past this times the mean
COOL_AFTER = 30.0  # seconds a value must stay cooler before it gives a replica back
FORGET_AFTER = 600.0  # seconds a value held by no replica and not requested stays routed
LOADS_OVER = 60.0  # seconds of loads `loads_per_minute` counts
MAX_VALUES = 1000  # routers at most per API (the busiest values)
# Values the gateway's rules can carry verbatim (anything else is balanced as usual).
ROUTABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+=-]{0,127}")


def rank(value: str, servers: Sequence[str]) -> list[str]:
    """The servers by rendezvous weight for `value`, highest first (stable across processes)."""

    def weight(server: str) -> bytes:
        return hashlib.blake2b(f"{value}\0{server}".encode(), digest_size=8).digest()

    return sorted(servers, key=weight, reverse=True)


def assign(
    loads: Mapping[str, float],
    spread: Mapping[str, int],
    servers: Sequence[str],
    spread_at: float,
    per_server: int | None = None,
    previous: Mapping[str, tuple[str, ...]] | None = None,
    known: Collection[str] = (),
) -> dict[str, tuple[str, ...]]:
    """Each value's servers.

    Its home is the first server of its ranking that holds fewer than `per_server` values (the models'
    cache_size, where known: values never crowd one replica's cache while another's has room) and is not
    past the load bound; a home it had (`previous`) is kept within a looser bound, so loads that wobble
    move nothing — unless a replica new since then (not in `known`) ranks above it: that is the value's
    share of the newcomer. A value that wants more (`spread[value]` > 1) adds the next servers of its
    ranking that have spare capacity (assigned less than `spread_at`): a busy stack, where none has, spreads nothing.
    """
    if not servers:
        return {}
    total = sum(loads.get(v, 0.0) for v in spread)
    bound = max(BOUND * total / len(servers), spread_at)
    given: dict[str, float] = dict.fromkeys(servers, 0.0)
    count: dict[str, int] = dict.fromkeys(servers, 0)
    before = previous or {}
    out: dict[str, tuple[str, ...]] = {}

    def room(server: str, share: float, limit: float) -> bool:
        return (per_server is None or count[server] < per_server) and given[server] + share <= limit

    # Homes first, in a stable order (the same inputs give the same answer), each with its whole load ...
    for value in sorted(spread):
        ranked = rank(value, servers)
        load = loads.get(value, 0.0)
        had = before.get(value, ("",))[0]
        # Kept where it was, unless that replica left or one new since then ranks above it.
        keep = had in given and all(s in known for s in ranked[: ranked.index(had)])
        if keep and room(had, load, bound * STICKY):
            home = had
        else:
            home = next(
                (s for s in ranked if room(s, load, bound)),
                next((s for s in ranked if given[s] + load <= bound), min(ranked, key=lambda s: given[s])),
            )
        given[home] += load
        count[home] += 1
        out[value] = (home,)
    # ... then the values that want more, hottest first, onto replicas with spare capacity left.
    for value in sorted(spread, key=lambda v: (-loads.get(v, 0.0), v)):
        want = max(1, min(spread[value], len(servers)))
        if want == 1:
            continue
        share = loads.get(value, 0.0) / want
        (home,) = out[value]
        extra = [s for s in rank(value, servers) if s != home and room(s, share, spread_at)][: want - 1]
        for server in extra:
            given[server] += share
            given[home] -= share
            count[server] += 1
        out[value] = (home, *extra)
    return out


@dataclass
class _Seen:
    busy: float  # the replica's busy seconds of the value, as last read
    at: float


@dataclass
class Spread:
    """How many replicas one value is spread over now, with hysteresis."""

    count: int = 1
    cooler_since: float | None = None

    def update(self, load: float, spread_at: float, replicas: int, now: float) -> int:
        wanted = max(1, min(replicas, math.ceil(load / spread_at - 1e-9))) if load > 0 else 1
        if wanted > self.count:
            self.count, self.cooler_since = wanted, None
        elif wanted < self.count:
            if self.cooler_since is None:
                self.cooler_since = now
            elif now - self.cooler_since >= COOL_AFTER:
                self.count, self.cooler_since = self.count - 1, None
        else:
            self.cooler_since = None
        self.count = min(self.count, max(replicas, 1))
        return self.count


@dataclass
class ApiAffinity:
    """One API's values: their loads from the replicas' reports, their spread, and where they go."""

    spread_at: float
    per_server: int | None = None  # values one replica holds (its models' cache_size), where the spec says it
    observed_capacity: int | None = None  # ... else as its evictions showed (a cached replica, full at this)
    clock: Callable[[], float] = time.monotonic
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # server URL -> its last report
    loads: dict[str, float] = field(default_factory=dict)  # value -> mean requests in flight, stack-wide
    spreads: dict[str, Spread] = field(default_factory=dict)
    last_wanted: dict[str, float] = field(default_factory=dict)  # value -> when last held or requested
    requested: dict[str, float] = field(default_factory=dict)  # value -> when a replica last served it
    hits: dict[str, tuple[int, int]] = field(default_factory=dict)  # server URL -> (hits, misses) reported
    placed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # value -> its servers, as last routed
    _placed_on: set[str] = field(default_factory=set)  # the servers `placed` was computed over
    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)  # (server, value) -> busy last read
    _per_server: dict[tuple[str, str], float] = field(default_factory=dict)  # (server, value) -> load
    _loads: list[tuple[float, int]] = field(default_factory=list)  # (when, loads reported since the last report)

    def observe(self, server: str, report: Mapping[str, Any]) -> bool:
        """A replica's report (serving.affinity); True when its held values changed."""
        now = self.clock()
        known = server in self.reports  # a value new in a later report was served since the last one
        before = self.reports.get(server, {}).get("held")
        self.reports[server] = dict(report)
        busy = report.get("busy") if isinstance(report.get("busy"), dict) else {}
        assert isinstance(busy, dict)
        for value, seconds in busy.items():
            if not isinstance(seconds, int | float):
                continue
            seen = self._seen.get((server, value))
            if seen is not None and now > seen.at:
                # A value's busy seconds only grow; a restart (or another worker process answering) reads
                # lower: no load is made of it.
                self._per_server[(server, value)] = max(0.0, seconds - seen.busy) / (now - seen.at)
            self._seen[(server, value)] = _Seen(float(seconds), now)
            if seen is None or seconds > seen.busy:
                self.last_wanted[value] = now
                if seen is not None or known:  # served since the last report (a first report: old news)
                    self.requested[value] = now
        held = report.get("held") if isinstance(report.get("held"), list) else []
        assert isinstance(held, list)
        for value in held:
            self.last_wanted[str(value)] = now
        # A cached value gone while as many others stay: evicted, so the cache is full at this many.
        cached = report.get("cached") is True and isinstance(before, list)
        if cached and set(before or ()) - set(held) and len(held) >= len(before or ()):
            self.observed_capacity = max(self.observed_capacity or 0, len(held))
        hits, misses = report.get("hits"), report.get("misses")
        if isinstance(hits, int) and isinstance(misses, int):
            last = self.hits.get(server)
            if last is not None and misses > last[1]:  # (lower: the replica restarted and counts afresh)
                self._loads = [(at, n) for at, n in self._loads if now - at <= LOADS_OVER]
                self._loads.append((now, misses - last[1]))
            self.hits[server] = (hits, misses)
        return before != held

    @property
    def capacity(self) -> int | None:
        """Values one replica holds: its models' cache_size, else as observed; None: unknown."""
        return self.per_server or self.observed_capacity

    def loads_per_minute(self) -> float:
        """Requests that found their value not held by their replica (a model load), over the last minute."""
        now = self.clock()
        return sum(n for at, n in list(self._loads) if now - at <= LOADS_OVER) * 60.0 / LOADS_OVER

    def forget(self, servers: Sequence[str]) -> None:
        """Only these replicas are left: the reports of the others go."""
        keep = set(servers)
        for server in [s for s in self.reports if s not in keep]:
            del self.reports[server]
            self.hits.pop(server, None)
        for key in [k for k in self._seen if k[0] not in keep]:
            del self._seen[key]
            self._per_server.pop(key, None)

    def routes(self, servers: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Each routable value's servers among `servers` (the ready replicas) now."""
        now = self.clock()
        self.forget(servers)
        for value in [v for v, at in self.last_wanted.items() if now - at > FORGET_AFTER]:
            del self.last_wanted[value]
            self.spreads.pop(value, None)
            self.requested.pop(value, None)
        loads: dict[str, float] = {}
        for (_server, value), load in self._per_server.items():
            loads[value] = loads.get(value, 0.0) + load
        self.loads = loads
        values = [v for v in self.last_wanted if ROUTABLE.fullmatch(v)]
        values = sorted(values, key=lambda v: (-loads.get(v, 0.0), v))[:MAX_VALUES]
        spread = {
            v: self.spreads.setdefault(v, Spread()).update(loads.get(v, 0.0), self.spread_at, len(servers), now)
            for v in values
        }
        self.placed = assign(
            loads, spread, sorted(servers), self.spread_at, self.capacity, self.placed, self._placed_on
        )
        self._placed_on = set(servers)
        return self.placed

    def in_use(self, window: float) -> int:
        """Distinct values served within the last `window` seconds (the working set the replicas must hold)."""
        now = self.clock()
        return sum(1 for at in self.requested.values() if now - at <= window)

    def hit_ratio(self) -> float | None:
        hits = sum(h for h, _m in self.hits.values())
        total = hits + sum(m for _h, m in self.hits.values())
        return hits / total if total else None

    def held(self) -> dict[str, list[str]]:
        """Server URL -> the values it reports holding."""
        return {server: [str(v) for v in report.get("held", [])] for server, report in self.reports.items()}
