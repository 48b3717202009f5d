"""The settings one replica runs with.

The control plane (`stack`) validates `stack.yaml` and hands each replica a
plain JSON document of this shape; `serving` never parses YAML itself, so the
replica image needs nothing beyond aiohttp and prometheus-client.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_ENV = "STACK_SERVING_CONFIG"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 8
    batch_interval: float = 0.01  # seconds to wait for a batch to fill
    max_in_flight: int = 2  # batches running at once: the next is prepared while one runs
    # When no batch is running, send what has arrived at once instead of waiting out the
    # interval: an idle model serves a lone request without delay (adaptive batch sizes).
    eager: bool = False


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing of this replica (stack.yaml's `tracing`); see serving.tracing."""

    endpoint: str  # where spans are posted over OTLP/HTTP: a collector's .../v1/traces
    sample_rate: float = 0.1  # for traces this replica starts; a caller's decision is kept (parent-based)
    project: str = ""  # resource attributes: stack.project and stack.version
    version: str = ""


@dataclass(frozen=True)
class ServingConfig:
    predictor_path: str
    api: str = "api"
    predictor_class: str = ""  # empty: Predictor, else PythonPredictor
    config: dict[str, Any] = field(default_factory=dict)
    python_path: list[str] = field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 8888
    processes_per_replica: int = 1
    threads_per_process: int = 1
    # Requests executing or queued per replica; beyond it the replica answers 503.
    max_concurrency: int = 100  # as stack.yaml's default (predictor.max_concurrency), and Cortex's
    timeout: float | None = None  # seconds per request; None waits forever
    # Liveness (serving.health): a predict running this long is stuck (the replica answers what it holds
    # and is replaced); the event loop silent for health_check_timeout is stuck; check_health() runs every
    # health_check_period and must return within health_check_timeout.
    stuck_after: float = 300.0
    health_check_period: float = 10.0
    health_check_timeout: float = 10.0
    max_body_size: int = 16 * 1024 * 1024
    body_timeout: float = 30.0  # seconds for the whole body to arrive, then 408
    batching: BatchingConfig | None = None
    # On SIGTERM: keep serving this long so the router notices readiness failing ...
    drain_delay: float = 5.0
    # ... then give in-flight and streaming requests this long to finish.
    grace_period: float = 30.0
    # Clients must send one of these as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    api_keys: list[str] = field(default_factory=list)
    # More keys, one per line, read at start: a Compose secret or a Nomad template, so keys are
    # never in the replica's environment (`docker inspect`, /proc/PID/environ) nor in its image.
    api_keys_file: str | None = None
    # GET /openapi.json without a key even when keys are set (gateway.public_openapi).
    public_openapi: bool = False
    # GPUs of the replica (a fraction of one when it shares a GPU); with more than one, worker process i
    # sees only GPU i.
    gpus: float = 0
    log_level: str = "info"
    log_format: str = "text"  # or "json"
    predictor_type: str = "python"  # python | onnx (onnx_client, onnxruntime)
    protocol: str = "default"  # default (POST /) | openai (/v1/chat/completions, ...) | v2 (Open Inference)
    # Models for python_client / onnx_client (serving.models.ModelsConfig as a dict); None: no models.
    models: dict[str, Any] | None = None
    # The project's directory as the replica sees it (relative model paths start there).
    project_root: str | None = None
    # Pipelines (serving.calls): the APIs this one may call, and the file where the controller lists
    # their ready replicas (or the activator of one at zero); None: no calls.
    calls: list[str] = field(default_factory=list)
    upstreams_file: str | None = None
    # Cortex's model monitoring: {"model_type": "classification" | "regression", "key": field} or None.
    monitoring: dict[str, str] | None = None
    tracing: TracingConfig | None = None  # None: nothing of tracing is imported or runs
    # networking.affinity as ["query", NAME] or ["header", NAME]: the replica reports what it serves of each
    # value (serving.affinity) for the gateway's model affinity; None: none.
    affinity: list[str] | None = None
    # Named keys with a concurrency limit (gateway.keys): where this replica releases a request's lease
    # (`X-Stack-Lease`, set by the gateway) before its answer leaves (stack.control.tenants); None: nowhere.
    leases_url: str | None = None
    # Named keys of different priorities: queued requests are taken highest priority first (serving.pool).
    priorities: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serving config field(s): {', '.join(unknown)}")
        values = dict(data)
        if values.get("batching") is not None:
            values["batching"] = BatchingConfig(**values["batching"])
        if values.get("tracing") is not None:
            values["tracing"] = TracingConfig(**values["tracing"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ServingConfig:
        return cls.from_dict(json.loads(text))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=2)

    def replace(self, **changes: Any) -> ServingConfig:
        return dataclasses.replace(self, **changes)


def config_from_env() -> ServingConfig | None:
    text = os.environ.get(CONFIG_ENV)
    return ServingConfig.from_json(text) if text else None
