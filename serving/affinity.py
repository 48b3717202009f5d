"""What this replica serves of each affinity value (`networking.affinity`: a model's name, usually).

The gateway sends every request carrying the same value of the API's affinity query parameter or header
to the same replicas (stack.control.affinity decides which, from what each replica reports here). A
replica reports, on `/healthz`:

- `held`: the values it holds now: the models its model client has loaded (python/onnx/tensorflow
  clients) or its predictor's `loaded_models()` names, else the values it served in the last `RECENT`
  seconds (at most `KEEP`);
- `cached`: whether `held` is a real cache (a model client or `loaded_models()`): then a value leaving it
  while as many others stay is an eviction, which tells the controller how many values one replica holds;
- `busy`: per value, the seconds its requests have spent in this replica so far (finished and running):
  the controller turns two readings into the value's mean requests in flight;
- `hits` and `misses`: requests whose value it held when they arrived, and those it did not (a model
  loaded for them) — the hit ratio `stack status` shows.

A request without the value counts nowhere. Counting costs two dict updates per request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

RECENT = 300.0  # seconds a value served stays "held" by a replica without a model client
KEEP = 256  # values remembered at most (the most recent)
MAX_VALUE = 128  # longer values are not tracked (the gateway never pins them either)


@dataclass
class _Value:
    busy: float = 0.0  # seconds of finished requests
    running: int = 0
    since: float = 0.0  # monotonic: when `running` last changed (running requests' busy time accrues from it)
    seen: float = 0.0  # monotonic: its last request


class AffinityTracker:
    def __init__(
        self,
        source: tuple[str, str],
        loaded: Callable[[], Collection[str] | None] = lambda: None,
        registry: CollectorRegistry | None = None,
        api: str = "api",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind, self.name = source  # ("query", "model") or ("header", "X-Model")
        self._loaded = loaded  # the model client's loaded models (None: no model client)
        self._clock = clock
        self._values: OrderedDict[str, _Value] = OrderedDict()  # least recently seen first
        self.hits = 0
        self.misses = 0
        self._requests = Counter(
            "stack_affinity_requests",
            "Requests carrying the API's affinity value, by whether this replica held it when they arrived.",
            ["api", "hit"],
            registry=registry,
        )
        self._hit = self._requests.labels(api, "true")
        self._miss = self._requests.labels(api, "false")

    def value_of(self, request: Any) -> str | None:
        """The request's affinity value, or None (absent, empty or too long)."""
        if self.kind == "query":
            value = request.query.get(self.name) if request.query_string else None
        else:
            value = request.headers.get(self.name)
        if not value or len(value) > MAX_VALUE:
            return None
        return str(value)

    def begin(self, request: Any) -> str | None:
        """A request arrived: count it as a hit or a miss; returns its value for `end`."""
        value = self.value_of(request)
        if value is None:
            return None
        now = self._clock()
        if value in self.held(now):
            self.hits += 1
            self._hit.inc()
        else:
            self.misses += 1
            self._miss.inc()
        entry = self._values.pop(value, None) or _Value()
        self._values[value] = entry  # most recent last
        self._accrue(entry, now)
        entry.running += 1
        entry.seen = now
        while len(self._values) > KEEP:
            self._values.popitem(last=False)
        return value

    def end(self, value: str | None) -> None:
        if value is None:
            return
        entry = self._values.get(value)
        if entry is None or entry.running == 0:  # forgotten meanwhile (KEEP): nothing to finish
            return
        self._accrue(entry, self._clock())
        entry.running -= 1

    def held(self, now: float | None = None) -> set[str]:
        models = self._loaded()
        if models is not None:
            return set(models)
        return self._recent(self._clock() if now is None else now)

    def _recent(self, now: float) -> set[str]:
        return {v for v, e in self._values.items() if e.running or now - e.seen <= RECENT}

    def report(self) -> dict[str, Any]:
        """What `/healthz` carries (see the module's doc)."""
        now = self._clock()
        busy = {}
        for value, entry in self._values.items():
            self._accrue(entry, now)
            busy[value] = round(entry.busy, 3)
        models = self._loaded()
        held = set(models) if models is not None else self._recent(now)
        return {
            "held": sorted(held),
            "cached": models is not None,
            "busy": busy,
            "hits": self.hits,
            "misses": self.misses,
        }

    @staticmethod
    def _accrue(entry: _Value, now: float) -> None:
        if entry.running:
            entry.busy += entry.running * (now - entry.since)
        entry.since = now
