"""What `stack status` reports, the same on every target.

Fields mean the same everywhere: `desired` is the count the target is
converging to, `ready` the replicas the gateway sends requests to, `version`
what is deployed (not what the files on disk would build: `changed` says
those differ, i.e. files changed since the last `stack up`).
`to_dict` is the `--json` document; `from_dict` reads it back (the local
supervisor sends it over its socket).

An API's phase is one pure function of what a target observed (`api_phase`),
the same on every target; replica states are one enum.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class ApiPhase(StrEnum):
    """An API's state as `stack status` names it (the JSON carries the value)."""

    LIVE = "live"  # every replica asked for is ready
    STARTING = "starting"  # replicas asked for are not all ready yet
    UPDATING = "updating"  # a rolling update to a new version is under way
    ERROR = "error"  # its replicas keep failing and none serves
    STOPPED = "stopped"  # not deployed (or torn down)
    SCALED_TO_ZERO = "scaled to zero"  # no replica asked for and none left
    SCALING_TO_ZERO = "scaling to zero"  # no replica asked for, some still draining

    @property
    def settled(self) -> bool:
        """`stack up` and `stack scale` may return: nothing more is coming up."""
        return self in (ApiPhase.LIVE, ApiPhase.SCALED_TO_ZERO, ApiPhase.SCALING_TO_ZERO)


class ReplicaState(StrEnum):
    STARTING = "starting"  # running, not ready yet (loading its model)
    READY = "ready"  # the gateway sends it requests
    DRAINING = "draining"  # leaving: out of the gateway, finishing what it has
    STUCK = "stuck"  # alive but not serving (a predict stuck, its event loop silent): out of the gateway, replaced
    FAILED = "failed"  # crashed, unhealthy or restarting
    EXITED = "exited"  # stopped (kept for a restart: an API at zero) or completed


@dataclass(frozen=True)
class Observed:
    """What a target saw of one API, counted: the input of `api_phase`."""

    desired: int  # replicas asked for
    ready: int  # replicas the gateway sends requests to
    alive: int = 0  # replicas running or starting, of any version, draining ones included
    failing: bool = False  # replicas of the deployed version keep failing
    updating: bool = False  # a rolling update is under way
    deployed: bool = True  # the API runs at all (a registered job, containers, a supervisor's API)


def api_phase(seen: Observed) -> ApiPhase:
    """The one ladder from observed replicas to an API's phase."""
    if not seen.deployed:
        return ApiPhase.STOPPED
    if seen.failing and seen.ready == 0:
        return ApiPhase.ERROR
    if seen.updating:
        return ApiPhase.UPDATING
    if seen.desired == 0:
        return ApiPhase.SCALED_TO_ZERO if seen.alive == 0 else ApiPhase.SCALING_TO_ZERO
    if seen.ready >= seen.desired:
        return ApiPhase.LIVE
    return ApiPhase.STARTING


@dataclass(frozen=True)
class ReplicaStatus:
    id: str  # the name `stack logs` prefixes its lines with
    state: ReplicaState
    version: str
    health: str = ""  # the target's own health word (Docker's health, Nomad's), when it has one
    pid: int | None = None
    port: int | None = None
    node: str = ""
    uptime_s: float | None = None
    restarts: int = 0
    last_event: str = ""
    gpu: str = ""  # the GPU(s) it is pinned to (UUIDs where known), for a GPU API
    gpu_memory_bytes: int | None = None  # its own process's GPU memory (NVML), where known


@dataclass(frozen=True)
class Traffic:
    """From Prometheus: rates over the last minute, counts read off the counters themselves."""

    requests_per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    counts: dict[str, int] = field(default_factory=dict)  # by status class: 2xx, 4xx, 5xx
    error: str = ""


@dataclass
class ScaleChange:
    """One decision of the autoscaler that changed an API's replica count (stack.control.autoscale); the loop
    updates its latest while it retries it."""

    at: float  # unix time
    current: int
    desired: int
    rule: str  # which rule of the policy decided (stack.control.autoscale.policy.Decision.rule)
    reason: str
    applied: bool = True
    error: str = ""  # why the last attempt failed, while not applied
    attempts: int = 1  # a refused or failed change is retried, not listed again


@dataclass(frozen=True)
class AutoscalerStatus:
    """What the autoscaler thinks of an API now (`last`) and the count changes it made recently."""

    last: str = ""
    changes: list[ScaleChange] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> AutoscalerStatus | None:
        """Read back from JSON (a state file, the supervisor's socket); None for anything else."""
        if not isinstance(data, dict):
            return None
        changes = []
        for change in data.get("changes", []):
            if isinstance(change, dict):
                with contextlib.suppress(TypeError):  # one torn entry (a field missing) is left out, not fatal
                    changes.append(ScaleChange(**{k: v for k, v in change.items() if k in _names(ScaleChange)}))
        return cls(str(data.get("last") or ""), changes)


@dataclass(frozen=True)
class AffinityStatus:
    """An API's model affinity now (networking.affinity, stack.control.affinity)."""

    models: dict[str, list[str]]  # value -> the replicas its requests go to
    held: dict[str, list[str]]  # replica -> the values it reports holding
    in_flight: dict[str, float]  # value -> mean requests in flight, stack-wide (only values with load)
    hit_ratio: float | None  # requests whose value their replica held, of all with a value; None: none yet
    per_replica: int | None = None  # values one replica holds (cache_size, or as observed); None: unknown
    loads_per_minute: float = 0.0  # requests that found their value not held (a load), over the last minute

    @classmethod
    def from_dict(cls, data: Any) -> AffinityStatus | None:
        """Read back from JSON (the controller's affinity file or variable); None for anything else."""
        if not isinstance(data, dict):
            return None

        def mapping(key: str) -> dict[str, Any]:
            value = data.get(key)
            return value if isinstance(value, dict) else {}

        ratio, per_replica, loads = data.get("hit_ratio"), data.get("per_replica"), data.get("loads_per_minute")
        return cls(
            {str(k): [str(r) for r in v] for k, v in mapping("models").items() if isinstance(v, list)},
            {str(k): [str(r) for r in v] for k, v in mapping("held").items() if isinstance(v, list)},
            {str(k): float(v) for k, v in mapping("in_flight").items() if isinstance(v, int | float)},
            float(ratio) if isinstance(ratio, int | float) else None,
            per_replica if isinstance(per_replica, int) and not isinstance(per_replica, bool) else None,
            float(loads) if isinstance(loads, int | float) else 0.0,
        )


@dataclass(frozen=True)
class ApiStatus:
    name: str
    status: ApiPhase
    ready: int
    desired: int
    endpoint: str
    version: str
    changed: bool = False  # the project's files differ from what was deployed
    error: str | None = None
    restarts: int = 0
    autoscaled: bool = False
    autoscaler: AutoscalerStatus | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    events: list[str] = field(default_factory=list)
    replicas: list[ReplicaStatus] = field(default_factory=list)
    traffic: Traffic | None = None
    error_replica: str = ""  # the replica whose failure `error` is (its log says more), where known
    # Why the last `stack up`'s rollout of this API was rolled back (it runs its old version again); "" if not.
    rolled_back: str = ""
    gpu_slots: int = 0  # a GPU API's placed replica slots: the most replicas it can have on this host
    affinity: AffinityStatus | None = None  # None: the API has no networking.affinity

    @property
    def at_gpu_capacity(self) -> bool:
        return 0 < self.gpu_slots <= self.desired

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
    decisions: list[dict[str, Any]]  # stack.control.canary.Decision, newest last


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
class GpuStatus:
    """One GPU of the host: the replica slots placed on it and, from the replicas' NVML metrics, its use."""

    index: int
    uuid: str = ""
    name: str = ""
    memory_total_bytes: int | None = None
    slots: list[str] = field(default_factory=list)  # "api#n", as `stack plan` prints them
    share: float = 0.0  # of the GPU, the placed slots together
    utilization: float | None = None  # 0..1, now
    memory_used_bytes: int | None = None


@dataclass(frozen=True)
class CallStatus:
    """An edge of the pipelines' call graph (`calls` in stack.yaml), with the caller's counts of it."""

    caller: str
    callee: str
    calls_per_second: float | None = None  # over the last minute
    errors_per_second: float | None = None  # answers that were not 2xx, and calls no answer came for
    calls: int | None = None  # since the callers' replicas started (the counters' newest values)
    errors: int | None = None
    p99_ms: float | None = None
    error: str = ""  # why the numbers are missing (no Prometheus)


@dataclass(frozen=True)
class ComponentStatus:
    """A process or container of the stack beside the replicas: the gateway, Prometheus, the controller."""

    name: str  # gateway | prometheus | controller
    running: bool
    detail: str = ""  # what it is here: "Traefik, pid 123", a container's name
    problem: str = ""  # why it is not running and what to do, when it is not
    restarts: int = 0  # times the stack started it again


@dataclass(frozen=True)
class StackStatus:
    project: str
    target: str
    gateway_port: int
    apis: list[ApiStatus]
    notes: list[str] = field(default_factory=list)  # things the user should know (a moved port, a dead stack)
    pid: int | None = None  # the stack's controller process, where it is one on this machine (local)
    splitters: list[SplitterStatus] = field(default_factory=list)
    gpus: list[GpuStatus] = field(default_factory=list)  # the GPUs the stack's slots are placed on
    components: list[ComponentStatus] = field(default_factory=list)  # gateway, Prometheus, controller
    calls: list[CallStatus] = field(default_factory=list)  # the pipelines' call graph, edge by edge
    images: int | None = None  # the images built for the stack on this host (Compose)
    images_bytes: int | None = None  # the disk they take beyond the base image they share

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "target": self.target,
            "gateway_port": self.gateway_port,
            "pid": self.pid,
            "notes": self.notes,
            "apis": [api.to_dict() for api in self.apis],
            "splitters": [asdict(s) for s in self.splitters],
            "gpus": [asdict(g) for g in self.gpus],
            "components": [asdict(c) for c in self.components],
            "calls": [asdict(c) for c in self.calls],
            "images": self.images,
            "images_bytes": self.images_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackStatus:
        apis = []
        for api in data.get("apis", []):
            values = {k: v for k, v in api.items() if k in _names(ApiStatus) and k != "traffic"}
            values["status"] = ApiPhase(api["status"])
            values["autoscaler"] = AutoscalerStatus.from_dict(api.get("autoscaler"))
            values["affinity"] = AffinityStatus.from_dict(api.get("affinity"))
            values["replicas"] = [
                ReplicaStatus(
                    **{**{k: v for k, v in r.items() if k in _names(ReplicaStatus)}, "state": ReplicaState(r["state"])}
                )
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
            [GpuStatus(**{k: v for k, v in g.items() if k in _names(GpuStatus)}) for g in data.get("gpus", [])],
            [
                ComponentStatus(**{k: v for k, v in c.items() if k in _names(ComponentStatus)})
                for c in data.get("components", [])
            ],
            [CallStatus(**{k: v for k, v in c.items() if k in _names(CallStatus)}) for c in data.get("calls", [])],
            data.get("images"),
            data.get("images_bytes"),
        )

    def missing(self) -> list[ComponentStatus]:
        """The stack's components that are not running now."""
        return [c for c in self.components if not c.running]

    def api(self, name: str) -> ApiStatus | None:
        return next((a for a in self.apis if a.name == name), None)


def _names(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}
