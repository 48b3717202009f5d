"""The Compose target's plan: the stack's `compose.yaml`, Prometheus' configuration, each API's Dockerfile,
the controller's Dockerfile and the API keys' file, from the spec.

One Compose service per API version (`<api>-<version>`: a rolling update runs both), and for a GPU API one
per replica slot, pinned to its GPU(s) (Docker's `count: N` always means GPUs 0..N-1). Only the gateway
publishes a port; the controller alone holds the Docker socket and publishes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stack.control.autoscale.config import config_of
from stack.plan.gateway import gateway_read_timeout, traefik_tls_args, traefik_tracing_args
from stack.plan.gpus import Gpu, place
from stack.plan.images import (
    CONTROLLER_DOCKERFILE,
    REPLICA_USER,
    api_dockerfile,
    api_dockerfile_name,
    build_context,
    controller_dockerfile,
    controller_image,
    service_name,
)
from stack.plan.plan import Plan
from stack.plan.serving import REPLICA_PORT, api_keys_text, needs_model_cache
from stack.plan.templates import header as file_header
from stack.plan.templates import template_environment
from stack.plan.values import CONTROLLER_PORT, CONTROLLER_STATE_DIR, DEFAULT_IMAGES, ERRORS_PORT, api_values
from stack.plan.versions import project_digest
from stack.routes import UPSTREAMS_FILE, api_routes
from stack.spec import Api, LoadedSpec, Spec
from stack.spec.units import format_duration
from stack.tls import tls_files

CONTROL_DIR = ".stack/compose/control"  # the controller's routes (Traefik) and targets (Prometheus)
DASHBOARD_PORT = 9102  # the dashboard's forwarder (stack.control.dashboard.proxy), published on 127.0.0.1
CONTROLLER_HOST = "autoscaler"  # the controller's Compose service: its address on the stack's network
KEYS_FILE = "keys/api_keys"  # the plan's API keys file: 0600 in a 0700 directory the replicas mount
COMPOSE_KEYS_DIR = "/run/stack-keys"  # where a replica (and the controller) sees that directory
COMPOSE_KEYS_FILE = f"{COMPOSE_KEYS_DIR}/api_keys"
EXITS_DIR = "exits"  # in the plan's directory: each replica's start-up error, <container short id>.json
COMPOSE_EXITS_DIR = "/run/stack-exits"
MODEL_CACHE = "/model-cache"  # where a replica finds the host's shared model cache
# Pipelines: where a replica reads the ready replicas of the APIs it calls (serving.calls): a directory of
# the controller's, read-only.
COMPOSE_UPSTREAMS_DIR = "/stack/upstreams"
COMPOSE_ACME_CA = "/etc/stack/acme-ca.pem"  # tls.acme.ca_file in the gateway
DOCKER_HOST_NAME = "host.docker.internal"  # the Docker host, from a container (extra_hosts: host-gateway)


def plan(
    loaded: LoadedSpec,
    out_dir: Path,
    *,
    host_gpus: int | list[Gpu] | None = None,
    images: dict[str, str] | None = None,
) -> Plan:
    """`host_gpus`: the host's GPUs (stack.plan.gpus.host_gpus), or their count; None: unknown."""
    spec = loaded.spec
    out_dir = out_dir.resolve()
    placement = place(spec.apis, gpus_of(host_gpus))
    env = template_environment()
    digest = project_digest(loaded, exclude=out_dir)
    header = file_header(loaded)
    apis = []
    files: dict[str, str] = {}
    for api in spec.every_api:
        cached = needs_model_cache(api)
        values = api_values(
            loaded,
            api,
            digest,
            registry="",
            drain_in_replica=True,
            keys_file=COMPOSE_KEYS_FILE,
            model_cache=MODEL_CACHE if cached else None,
            upstreams_file=f"{COMPOSE_UPSTREAMS_DIR}/{UPSTREAMS_FILE}",
            traces_url=from_container(spec.tracing.traces_url) if spec.tracing else None,
            leases_url=f"http://{CONTROLLER_HOST}:{ERRORS_PORT}",
        )
        values["calls"] = bool(api.calls)
        # S3 models are downloaded once per host, into a volume (or host directory) every replica mounts.
        values["model_cache"] = _compose_model_cache(loaded, api, out_dir) if cached else None
        values["limits"] = _limits(api)
        service = service_name(api, values["version"])
        values["batch"] = api.kind == "BatchAPI"
        if values["batch"]:
            # A BatchAPI's service is the template of its job workers: `stack up` creates its container,
            # never started; the controller copies it for each worker (stack.targets.compose.batch_workers).
            values["slots"] = [{"service": service, "replicas": 1, "device_ids": [], "gpus": _whole(api)}]
        elif api.compute.gpu:
            # One Compose service per replica slot, pinned to its GPU(s): Docker's `count: N` always means
            # GPUs 0..N-1. The slots share one Traefik service; scaling turns slots on (1) or off (0).
            values["slots"] = [
                {
                    "service": f"{service}-gpu{slot.number}",
                    "replicas": 1 if slot.number < api.autoscaling.initial else 0,
                    "device_ids": placement.device_ids(slot),
                }
                for slot in placement.of(api.name)
            ]
        else:
            values["slots"] = [{"service": service, "replicas": api.autoscaling.initial, "device_ids": []}]
        if api.predictor.image is None:
            files[api_dockerfile_name(api)] = api_dockerfile(loaded, api, env)
            values["build"] = {
                "context": os.path.relpath(build_context(loaded.root, service), out_dir),
                "dockerfile": "Dockerfile",
            }
        else:
            values["build"] = None
        apis.append(values)
    network = f"{spec.project}-stack"
    mounts, tls_seen = tls_mounts(loaded, out_dir)
    scaling = config_of(
        loaded,
        placement.slot_devices(),
        {a["name"]: a["version"] for a in apis},
        tls_files=tls_files(loaded.root, spec.gateway.tls, tls_seen),
    )
    # The controller runs in every Compose stack (routes, targets, killed replicas), autoscaled or not.
    files[CONTROLLER_DOCKERFILE] = controller_dockerfile(loaded, env)
    control_dir = loaded.root / CONTROL_DIR
    files[KEYS_FILE] = api_keys_text(loaded)  # always: replicas follow keys added, changed or removed
    files["compose.yaml"] = env.get_template("compose/compose.yaml.j2").render(
        keys={"directory": "./keys", "mount": COMPOSE_KEYS_DIR},
        exits={"directory": f"./{EXITS_DIR}", "mount": COMPOSE_EXITS_DIR},
        secrets_owner=_secrets_owner(),
        docker_host=spec.tracing is not None and DOCKER_HOST_NAME in from_container(spec.tracing.traces_url),
        header=header,
        project=spec.project,
        network=network,
        gateway={
            "port": spec.gateway.port,
            "publish": f"{spec.gateway.host}:" if spec.gateway.host else "",
            "dashboard": spec.gateway.dashboard,
            "dashboard_port": spec.gateway.dashboard_port,
            "access_log": spec.gateway.access_log,
            "read_timeout": gateway_read_timeout(spec),
            "http_port": spec.gateway.http_port,
            "tls_args": compose_tls_args(spec),
            "tracing_args": traefik_tracing_args(
                spec, from_container(spec.tracing.traces_url) if spec.tracing else None
            ),
            "tls_mounts": mounts,
            "acme": bool(spec.gateway.tls and spec.gateway.tls.acme),
            "acme_ca": acme_ca(loaded, out_dir),
        },
        control={
            "directory": os.path.relpath(control_dir, out_dir),
            "routes": os.path.relpath(control_dir / "routes", out_dir),
            "targets": os.path.relpath(control_dir / "targets", out_dir),
            "upstreams": os.path.relpath(control_dir / "upstreams", out_dir),
            "upstreams_mount": COMPOSE_UPSTREAMS_DIR,
        },
        images={**DEFAULT_IMAGES, **(images or {})},
        apis=apis,
        model_volumes=sorted({a["model_cache"] for a in apis if a["model_cache"] and "/" not in a["model_cache"]}),
        replica_port=REPLICA_PORT,
        dashboard_port=DASHBOARD_PORT,
        prometheus={"port": spec.prometheus.port, "retention": format_duration(spec.prometheus.retention)},
        autoscaler={
            "context": os.path.relpath(build_context(loaded.root, "autoscaler"), out_dir),
            "dockerfile": "Dockerfile",
            "image": controller_image(),
            "config": scaling.to_json(),
            "state_dir": os.path.relpath(loaded.root / CONTROLLER_STATE_DIR, out_dir),
            "port": CONTROLLER_PORT,
            # BatchAPIs: the controller lists and reads their jobs' S3 sources with the APIs' own S3 settings.
            "env": sorted(
                {(k, v) for a in spec.batch_apis for k, v in a.predictor.env.items() if k.startswith("AWS_")}
            ),
        },
    )
    files["prometheus.yml"] = env.get_template("compose/prometheus.yml.j2").render(
        header=header,
        project=spec.project,
        network=network,
        replica_port=REPLICA_PORT,
        scrape_interval=format_duration(spec.prometheus.scrape_interval),
        autoscaler_port=CONTROLLER_PORT,
    )
    versions = {a["name"]: a["version"] for a in apis}
    return Plan(
        "compose",
        digest,
        versions,
        {a["name"]: a["image"] for a in apis},
        api_routes(spec),
        files,
        placement,
        placement.warnings,
        frozenset({KEYS_FILE}),
    )


def _whole(api: Api) -> int:
    """A BatchAPI worker's GPUs on Compose: whole devices (Docker's `count`), none for a CPU API."""
    return -(-int(api.compute.gpu * 1000) // 1000) if api.compute.gpu else 0


def _compose_model_cache(loaded: LoadedSpec, api: Api, out_dir: Path) -> str:
    """What a replica mounts at MODEL_CACHE: a named volume, or a host directory (relative to the plan)."""
    given = api.predictor.model_cache or "model-cache"
    if "/" not in given:
        return given  # a volume of the project
    path = Path(given)
    return str(path) if path.is_absolute() else os.path.relpath(loaded.root / path, out_dir)


def _limits(api: Api) -> list[tuple[str, Any]]:
    limits: list[tuple[str, Any]] = []
    if api.compute.cpu is not None:
        limits.append(("cpus", f"{api.compute.cpu:g}"))
    if api.compute.mem is not None:
        mem = api.compute.mem
        limits.append(("memory", f"{mem // 1024**2}m" if mem % 1024**2 == 0 else str(mem)))
    return limits


def gpus_of(host_gpus: int | list[Gpu] | None) -> list[Gpu] | None:
    """`host_gpus` as GPUs: a count (`--gpus N`), the GPUs themselves, or None (unknown)."""
    if isinstance(host_gpus, int):
        return [Gpu(i) for i in range(host_gpus)]
    return host_gpus


def _secrets_owner() -> str | None:
    """Who a Compose replica runs as to read the keys file: the image's user where `stack up` runs as
    root (which hands the file to it), else the user that runs it (who owns the file) in the image's group."""
    if os.geteuid() == 0:
        return None
    return f"{os.geteuid()}:{REPLICA_USER}"


def tls_mounts(loaded: LoadedSpec, out_dir: Path) -> tuple[list[str], Callable[[Path], str]]:
    """Each directory of gateway.tls's files, read-only into the controller (a directory, not the file: a
    renewal that replaces the file is seen), and where a file is seen there."""
    tls = loaded.spec.gateway.tls
    names = [n for n in (tls.cert_file, tls.key_file, tls.client_ca_file) if n] if tls else []
    dirs = sorted({(loaded.root / name).resolve().parent for name in names})
    mounts = [f"{os.path.relpath(d, out_dir)}:/run/secrets/tls/{i}:ro" for i, d in enumerate(dirs)]
    return mounts, lambda path: f"/run/secrets/tls/{dirs.index(path.parent)}/{path.name}"


def acme_ca(loaded: LoadedSpec, out_dir: Path) -> str | None:
    tls = loaded.spec.gateway.tls
    if tls is None or tls.acme is None or not tls.acme.ca_file:
        return None
    return os.path.relpath((loaded.root / tls.acme.ca_file).resolve(), out_dir)


def compose_tls_args(spec: Spec) -> list[str]:
    return traefik_tls_args(spec, "/acme/acme.json", COMPOSE_ACME_CA)


def from_container(url: str) -> str:
    """`url` as a container reaches it: a collector on the Docker host's loopback is at host.docker.internal
    (the Compose services map it to the host's gateway address)."""
    return re.sub(r"^(https?://)(127\.0\.0\.1|localhost|\[::1\])(?=[:/]|$)", rf"\g<1>{DOCKER_HOST_NAME}", url)
