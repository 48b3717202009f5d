"""Who used what: per named key (`gateway.keys`) and API, the requests by status, the seconds spent on them,
their GPU-seconds (those seconds times the replica's `compute.gpu`) and the bytes in and out — Prometheus
counters `stack usage` sums. The key's name is the label, never the key. A request the gateway refused
(403, 429) never reaches a replica: the controller counts those (stack.control.tenants)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

PREFIX = "stack_key"


class Usage:
    def __init__(self, api: str, gpus: float, registry: CollectorRegistry | None) -> None:
        self.api = api
        self.gpus = gpus
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests a replica answered for a named key, by status code.",
            ["api", "key", "code"],
            registry=registry,
        )
        self.seconds = Counter(
            f"{PREFIX}_predict_seconds",
            "Seconds a replica spent answering a named key.",
            ["api", "key"],
            registry=registry,
        )
        self.gpu_seconds = Counter(
            f"{PREFIX}_gpu_seconds",
            "Those seconds times the replica's GPUs (compute.gpu).",
            ["api", "key"],
            registry=registry,
        )
        self.received = Counter(
            f"{PREFIX}_bytes_received", "Request body bytes of a named key.", ["api", "key"], registry=registry
        )
        self.sent = Counter(f"{PREFIX}_bytes_sent", "Response bytes to a named key.", ["api", "key"], registry=registry)

    def record(self, key: str, code: int, seconds: float, received: int, sent: int) -> None:
        self.requests.labels(self.api, key, str(code)).inc()
        self.seconds.labels(self.api, key).inc(seconds)
        if self.gpus:
            self.gpu_seconds.labels(self.api, key).inc(seconds * self.gpus)
        if received:
            self.received.labels(self.api, key).inc(received)
        if sent:
            self.sent.labels(self.api, key).inc(sent)
