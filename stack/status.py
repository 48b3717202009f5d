"""What `stack status` reports, the same on every target.

Fields mean the same everywhere: `desired` is the count the target is
converging to, `ready` the replicas the gateway sends requests to, `version`
what is deployed (not what the files on disk would build: `changed` says
those differ, i.e. files changed since the last `stack up`).
`to_dict` is the `--json` document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplicaStatus:
    id: str  # the name `stack logs` prefixes its lines with
    state: str  # starting | ready | draining | failed | exited | ...
    version: str
    health: str = ""  # the target's own health word (Docker's health, Nomad's), when it has one
    pid: int | None = None
    port: int | None = None
    node: str = ""
    uptime_s: float | None = None
    restarts: int = 0
    last_event: str = ""


@dataclass(frozen=True)
class Traffic:
    """From Prometheus: rates over the last minute, counts read off the counters themselves."""

    requests_per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    counts: dict[str, int] = field(default_factory=dict)  # by status class: 2xx, 4xx, 5xx
    error: str = ""


@dataclass(frozen=True)
class ApiStatus:
    name: str
    status: str  # live | starting | updating | error | stopped
    ready: int
    desired: int
    endpoint: str
    version: str
    changed: bool = False  # the project's files differ from what was deployed
    error: str | None = None
    restarts: int = 0
    autoscaled: bool = False
    autoscaler: dict[str, Any] | None = None  # {"last": reason, "changes": [...]}
    min_replicas: int = 1
    max_replicas: int = 1
    events: list[str] = field(default_factory=list)
    replicas: list[ReplicaStatus] = field(default_factory=list)
    traffic: Traffic | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        traffic = data.pop("traffic")
        if traffic is not None:
            counts = traffic.pop("counts")
            error = traffic.pop("error")
            data.update(traffic)
            data.update(counts)
            if error:
                data["traffic_error"] = error
        return data


@dataclass(frozen=True)
class CanaryStatus:
    api: str
    phase: str  # progressing | promoted | rolled back | stopped
    weight: int  # percent of the splitter's requests
    steps: list[int]
    step_started: float  # unix time
    interval: float
    decisions: list[dict[str, Any]]  # stack.canary.Decision, newest last


@dataclass(frozen=True)
class SplitterStatus:
    name: str
    endpoint: str
    weights: dict[str, int]  # API -> weight, as the gateway applies them now
    overridden: bool = False  # set by `stack split`, until the next `stack up` re-applies stack.yaml
    mirror: str = ""  # "API (N%)" when shadow traffic is on
    canary: CanaryStatus | None = None
    observed: dict[str, float] | None = None  # API -> share of the splitter's requests over the last minute

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitterStatus:
        canary = data.get("canary")
        return cls(**{**data, "canary": CanaryStatus(**canary) if canary else None})


@dataclass(frozen=True)
class StackStatus:
    project: str
    target: str
    gateway_port: int
    apis: list[ApiStatus]
    notes: list[str] = field(default_factory=list)  # things the user should know (a moved port, a dead stack)
    pid: int | None = None  # the stack's controller process, where it is one on this machine (local)
    splitters: list[SplitterStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "target": self.target,
            "gateway_port": self.gateway_port,
            "pid": self.pid,
            "notes": self.notes,
            "apis": [api.to_dict() for api in self.apis],
            "splitters": [asdict(s) for s in self.splitters],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackStatus:
        apis = []
        for api in data.get("apis", []):
            values = {k: v for k, v in api.items() if k in ApiStatus.__dataclass_fields__}
            values["replicas"] = [
                ReplicaStatus(**{k: v for k, v in r.items() if k in ReplicaStatus.__dataclass_fields__})
                for r in api.get("replicas", [])
            ]
            apis.append(ApiStatus(**values))
        return cls(
            data["project"],
            data.get("target", ""),
            data["gateway_port"],
            apis,
            list(data.get("notes", [])),
            data.get("pid"),
            [SplitterStatus.from_dict(s) for s in data.get("splitters", [])],
        )

    def api(self, name: str) -> ApiStatus | None:
        return next((a for a in self.apis if a.name == name), None)
