"""`stack usage`: per named key (`gateway.keys`) and API, what it used over a window, from the stack's Prometheus.

The replicas count what they answered (serving.usage: requests by status, seconds, GPU-seconds, bytes) and the
controller what it refused at the gateway (stack.control.tenants: 403, and 429 by rate or concurrency).
Every replica's series is its own (the `replica` label), so a series that began within the window counts
from zero and one older counts from its value at the window's start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from stack import prometheus

FIELDS = {
    "requests": "stack_key_requests_total",
    "predict_seconds": "stack_key_predict_seconds_total",
    "gpu_seconds": "stack_key_gpu_seconds_total",
    "bytes_in": "stack_key_bytes_received_total",
    "bytes_out": "stack_key_bytes_sent_total",
}
REFUSED = "stack_key_refused_total"


@dataclass
class KeyUsage:
    name: str
    api: str
    requests: int = 0  # every request that presented the key, whatever its answer (refused ones too)
    rate_limited: int = 0  # answered 429 at the gateway (rate or concurrency)
    forbidden: int = 0  # answered 403 at the gateway (an API the key may not call)
    predict_seconds: float = 0.0
    gpu_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _window_counts(url: str, metric: str, since: float, timeout: float) -> list[tuple[dict[str, str], float]]:
    """Each series' growth within the last `since` seconds (a series born within it: from zero)."""
    window = f"{max(int(since), 1)}s"
    latest = prometheus.query(url, f"last_over_time({metric}[{window}])", timeout)
    before = {_key(labels): value for labels, value in prometheus.query(url, f"{metric} offset {window}", timeout)}
    return [(labels, max(value - before.get(_key(labels), 0.0), 0.0)) for labels, value in latest]


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


def usage(url: str, since: float, timeout: float = 5.0) -> list[KeyUsage]:
    """Per key name and API, sorted; raises requests.RequestException or ValueError when Prometheus fails."""
    sums: dict[tuple[str, str], dict[str, float]] = {}

    def add(labels: dict[str, str], field: str, value: float) -> None:
        found = sums.setdefault((labels.get("key", ""), labels.get("api", "")), {})
        found[field] = found.get(field, 0.0) + value

    for field, metric in FIELDS.items():
        for labels, value in _window_counts(url, metric, since, timeout):
            add(labels, field, value)
    for labels, value in _window_counts(url, REFUSED, since, timeout):
        add(labels, "requests", value)
        add(labels, "forbidden" if labels.get("reason") == "forbidden" else "rate_limited", value)
    out = []
    for (name, api), found in sums.items():

        def count(field: str, found: dict[str, float] = found) -> int:
            return round(found.get(field, 0.0))

        out.append(
            KeyUsage(
                name,
                api,
                requests=count("requests"),
                rate_limited=count("rate_limited"),
                forbidden=count("forbidden"),
                predict_seconds=round(found.get("predict_seconds", 0.0), 3),
                gpu_seconds=round(found.get("gpu_seconds", 0.0), 3),
                bytes_in=count("bytes_in"),
                bytes_out=count("bytes_out"),
            )
        )
    return sorted(out, key=lambda u: (u.name, u.api))
