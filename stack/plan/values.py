"""The values every target's templates share for one API: its router, version, image, replica settings."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from stack.plan.serving import replica_config, tracing_config
from stack.plan.versions import api_version
from stack.routes import router_rule
from stack.spec import Api, LoadedSpec
from stack.spec.units import format_duration

STOP_MARGIN = 5.0  # seconds beyond drain + grace before the engine kills a replica
CONTROLLER_PORT = 9100  # the controller's /metrics, /status, /healthz and the dashboard's data
ERRORS_PORT = 9101  # the activator and the gateway's own errors (stack.control.gateway_errors)
CONTROLLER_STATE_DIR = ".stack/autoscaler"  # the controller's state shared with the host: decisions, counts
DEFAULT_IMAGES = {"traefik": "traefik:v3.7", "prometheus": "prom/prometheus:v2.42"}


def api_values(
    loaded: LoadedSpec,
    api: Api,
    digest: str,
    registry: str,
    drain_in_replica: bool,
    keys_file: str,
    model_cache: str | None = None,
    upstreams_file: str | None = None,
    traces_url: str | None = None,
    leases_url: str | None = None,
) -> dict[str, Any]:
    """One API's values for a template (a dict: the template is where they are serialized). `traces_url`: the
    tracing collector as the replica reaches it (default: stack.yaml's endpoint)."""
    version = api_version(api, digest)
    project = loaded.spec.project
    config = replica_config(
        loaded,
        api,
        root="/app",
        drain_delay=None if drain_in_replica else 0.0,
        keys_file=keys_file,
        model_cache=model_cache,
        upstreams_file=upstreams_file,
        tracing=tracing_config(loaded, version, traces_url),
        leases_url=leases_url,
    )
    predictor = api.predictor
    endpoint = api.endpoint
    return {
        "name": api.name,
        "router": f"{project}-{api.name}",
        "endpoint": endpoint,
        "rule": router_rule(endpoint),
        "version": version,
        "image": predictor.image or f"{registry}{project}-{api.name}:{version}",
        "serving_json": json.dumps(asdict(config), sort_keys=True, separators=(",", ":")),
        "env": sorted(predictor.env.items()),
        "autoscaled": api.autoscaled,
        "min_replicas": api.autoscaling.min_replicas,
        "max_replicas": api.autoscaling.max_replicas,
        "init_replicas": api.autoscaling.initial,
        "gpu": api.compute.gpu,
        "load_balancer": api.networking.load_balancer,
        "max_body_size": predictor.max_body_size,
        "drain_delay": format_duration(predictor.drain_delay),
        "stop_grace_period": format_duration(predictor.drain_delay + predictor.grace_period + STOP_MARGIN),
        "kill_timeout": format_duration(predictor.grace_period + STOP_MARGIN),
    }
