"""What the autoscaler needs to know about a stack, as plain JSON.

The Compose and Nomad plans hand it to the autoscaler in the
`STACK_AUTOSCALER_CONFIG` environment variable, so the autoscaler's image
holds no copy of the project and a change of bounds only restarts it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stack.control.autoscale.policy import Bounds
from stack.splits import SplitterConfig, splitters_of
from stack.tls import TlsFiles

if TYPE_CHECKING:
    from stack.spec import Api, LoadedSpec

CONFIG_ENV = "STACK_AUTOSCALER_CONFIG"


@dataclass(frozen=True)
class ApiScaling:
    name: str
    bounds: Bounds
    # GPU APIs on Compose: one service per replica slot, each pinned to its GPUs.
    gpu_slots: list[list[str]] = field(default_factory=list)
    stop_timeout: float = 30.0  # seconds Docker waits for a draining replica


@dataclass(frozen=True)
class RoutedApi:
    """Every API of the stack, as the Compose controller routes it and keeps its count."""

    name: str
    router: str  # Traefik's name for its router and service
    endpoint: str
    gpu_slots: list[list[str]] = field(default_factory=list)
    scale_to_zero: bool = False  # min_replicas 0: the activator wakes it
    load_balancer: str = "p2c"  # networking.load_balancer: how the gateway picks a replica
    max_body_size: int | None = None  # predictor.max_body_size: the gateway answers a longer declared body 413
    # predictor.health_check_timeout: a serving replica whose /healthz stays silent this long is stuck
    health_check_timeout: float = 10.0
    stop_timeout: float = 40.0  # drain + grace + margin: how long an unhealthy replica gets to stop
    # networking.affinity: ("query", NAME) or ("header", NAME), and the in-flight requests of one value a
    # replica takes before the value spreads to another (stack.control.affinity); None: no affinity.
    affinity: tuple[str, str] | None = None
    spread_at: float = 1.0
    cache_size: int | None = None  # predictor.models.cache_size: models one replica holds (None: unknown)


@dataclass(frozen=True)
class BatchRoute:
    """A BatchAPI: its endpoint takes jobs at the controller (stack.control.batch.jobs)."""

    name: str
    router: str
    endpoint: str
    config: dict[str, Any] = field(default_factory=dict)  # predictor.config, under each job's own


@dataclass(frozen=True)
class AutoscalerConfig:
    project: str
    scrape_interval: float
    apis: list[ApiScaling]  # the autoscaled ones
    routed: list[RoutedApi] = field(default_factory=list)  # all of them
    splitters: list[SplitterConfig] = field(default_factory=list)  # the Compose controller routes them
    tls: TlsFiles | None = None  # gateway.tls's files, as the controller reads them (it writes tls.yml)
    batch: list[BatchRoute] = field(default_factory=list)  # the BatchAPIs

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AutoscalerConfig:
        data: dict[str, Any] = json.loads(text)
        apis = [
            ApiScaling(a["name"], Bounds(**a["bounds"]), [list(s) for s in a["gpu_slots"]], a["stop_timeout"])
            for a in data["apis"]
        ]
        routed = [
            RoutedApi(
                a["name"],
                a["router"],
                a["endpoint"],
                [list(s) for s in a["gpu_slots"]],
                a.get("scale_to_zero", False),
                a.get("load_balancer", "p2c"),
                a.get("max_body_size"),
                a.get("health_check_timeout", 10.0),
                a.get("stop_timeout", 40.0),
                tuple(a["affinity"]) if a.get("affinity") else None,
                a.get("spread_at", 1.0),
                a.get("cache_size"),
            )
            for a in data.get("routed", [])
        ]
        splitters = [SplitterConfig.from_dict(x) for x in data.get("splitters", [])]
        tls = TlsFiles.from_dict(data["tls"]) if data.get("tls") else None
        batch = [BatchRoute(**b) for b in data.get("batch", [])]
        return cls(data["project"], data["scrape_interval"], apis, routed, splitters, tls, batch)

    @classmethod
    def from_env(cls) -> AutoscalerConfig:
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise ValueError(f"{CONFIG_ENV} is not set: pass a stack.yaml or run the planned autoscaler service")
        return cls.from_json(text)


def bounds_of(api: Api, per_unit: int = 1) -> Bounds:
    """`per_unit`: replicas per scaled unit (a Nomad allocation running several replica processes)."""
    spec = api.autoscaling
    return Bounds(
        min_replicas=-(-spec.min_replicas // per_unit),
        max_replicas=-(-spec.max_replicas // per_unit),
        target=api.target_concurrency * per_unit,
        window=spec.window,
        upscale_stabilization=spec.upscale_stabilization_period,
        downscale_stabilization=spec.downscale_stabilization_period,
        max_upscale_factor=spec.max_upscale_factor,
        max_downscale_factor=spec.max_downscale_factor,
        upscale_tolerance=spec.upscale_tolerance,
        downscale_tolerance=spec.downscale_tolerance,
        idle_timeout=spec.idle_timeout,
        target_gpu_utilization=spec.target_gpu_utilization / 100 if spec.target_gpu_utilization else None,
    )


def _cache_size(api: Api) -> int | None:
    models = api.predictor.models or api.predictor.multi_model_reloading
    return models.cache_size if models is not None else None


def _spread_at(api: Api) -> float:
    affinity = api.networking.affinity
    return affinity.spread_at if affinity is not None and affinity.spread_at else api.target_concurrency


def config_of(
    loaded: LoadedSpec,
    gpu_slots: dict[str, list[list[str]]] | None = None,
    versions: dict[str, str] | None = None,
    per_unit: dict[str, int] | None = None,
    tls_files: TlsFiles | None = None,
) -> AutoscalerConfig:
    """The autoscaled APIs of a spec (an API with min == max has nothing to decide); `versions`
    (API -> version) ties each splitter's canary to the version it rolls out."""
    spec = loaded.spec
    apis = [
        ApiScaling(
            api.name,
            bounds_of(api, (per_unit or {}).get(api.name, 1)),
            (gpu_slots or {}).get(api.name, []),
            api.predictor.drain_delay + api.predictor.grace_period + 5,
        )
        for api in spec.apis
        if api.autoscaled and api.autoscaling.engine == "stack"
    ]
    routed = [
        RoutedApi(
            api.name,
            f"{spec.project}-{api.name}",
            api.endpoint,
            (gpu_slots or {}).get(api.name, []),
            api.autoscaling.min_replicas == 0,
            api.networking.load_balancer,
            api.predictor.max_body_size,
            api.predictor.health_check_timeout,
            api.predictor.drain_delay + api.predictor.grace_period + 5,
            api.networking.affinity.source if api.networking.affinity is not None else None,
            _spread_at(api),
            _cache_size(api),
        )
        for api in spec.apis
    ]
    splitters = splitters_of(spec, versions)
    batch = [
        BatchRoute(api.name, f"{spec.project}-{api.name}", api.endpoint, dict(api.predictor.config))
        for api in spec.batch_apis
    ]
    return AutoscalerConfig(spec.project, spec.prometheus.scrape_interval, apis, routed, splitters, tls_files, batch)
