"""Render a validated spec into the files a target runs.

Deterministic: the same spec and project files give byte-identical output
(sorted keys, no timestamps, paths relative to the output directory).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jinja2

import serving
from stack import __version__
from stack.atomic import write_text_atomic
from stack.autoscale.config import config_of
from stack.errors import PlanError as PlanError  # re-exported: planning fails with it
from stack.files import ProjectFiles, package_files, tree_digest
from stack.plan.gateway import (
    DOCKER_HOST_NAME,
    acme_ca,
    compose_tls_args,
    from_container,
    gateway_read_timeout,
    tls_mounts,
    traefik_tracing_args,
)
from stack.plan.gpus import Gpu, Placement, place
from stack.plan.serving import REPLICA_PORT, api_keys_text, needs_model_cache, replica_config, tracing_config
from stack.routes import UPSTREAMS_FILE, router_rule
from stack.spec import Api, LoadedSpec
from stack.spec.units import format_duration
from stack.tls import tls_files

DEFAULT_IMAGES = {"traefik": "traefik:v3.7", "prometheus": "prom/prometheus:v2.42"}
STOP_MARGIN = 5.0  # seconds beyond drain + grace before the engine kills a replica
BUILD_DIR = ".stack/build"  # one assembled build context per image, prepared by `stack up`
# uvloop: the faster event loop the replicas run on where it installs (Linux, macOS).
RUNTIME_REQUIREMENTS = ["aiohttp>=3.11", "prometheus-client>=0.21", "uvloop>=0.19; sys_platform != 'win32'"]
AUTOSCALER_STATE_DIR = ".stack/autoscaler"  # decisions for `stack status`, APIs set by hand
CONTROL_DIR = ".stack/compose/control"  # the controller's routes (Traefik) and targets (Prometheus)
AUTOSCALER_PORT = 9100
ERRORS_PORT = 9101  # the activator and the gateway's own errors (stack.gateway_errors)
DASHBOARD_PORT = 9102  # Compose: the dashboard's forwarder (stack.dashboard.proxy), published on 127.0.0.1


KEYS_FILE = "keys/api_keys"  # the plan's API keys file: 0600 in a 0700 directory the replicas mount
COMPOSE_KEYS_DIR = "/run/stack-keys"  # where a Compose replica (and the controller) sees that directory
COMPOSE_KEYS_FILE = f"{COMPOSE_KEYS_DIR}/api_keys"
MODEL_CACHE = "/model-cache"  # where a replica finds the host's shared model cache
# Pipelines: where a replica reads the ready replicas of the APIs it calls (serving.calls): a directory
# of the controller's, read-only (Compose); a file a Nomad template renders from service discovery.
COMPOSE_UPSTREAMS_DIR = "/stack/upstreams"


SECRET_FILES = frozenset({KEYS_FILE})  # plan files only their owner (the replicas' user) may read
REPLICA_USER = 10001  # the unprivileged uid and gid replicas run as in their images


@dataclass(frozen=True)
class Plan:
    target: str
    files: dict[str, str] = field(default_factory=dict)
    placement: Placement = field(default_factory=lambda: Placement((), ()))  # GPU API slots on the GPUs
    notes: tuple[str, ...] = ()  # for the user: what the plan assumed, what a target does differently

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, content in sorted(self.files.items()):
            path = out_dir / name
            secret = name in SECRET_FILES
            if secret:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                path.parent.chmod(0o700)
                try:
                    if path.read_text() == content:
                        written.append(path)  # unchanged: its generation stays, no replica reads it again
                        continue
                except OSError:
                    pass
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, content, 0o600 if secret else 0o644)
            if secret and os.geteuid() == 0:
                # Compose mounts the directory as it is: its owner in the replica is the replica's user.
                os.chown(path.parent, REPLICA_USER, REPLICA_USER)
                os.chown(path, REPLICA_USER, REPLICA_USER)
            written.append(path)
        (out_dir / "api_keys").unlink(missing_ok=True)  # where earlier releases kept the keys: no copy stays
        return written


def template_environment() -> jinja2.Environment:
    """Every template of templates/ (shipped as stack.templates), with the filters they use."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("stack.templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["tojson"] = lambda value: json.dumps(value, sort_keys=True, ensure_ascii=False)
    # Compose interpolates $VAR everywhere; a literal dollar must be written $$.
    env.filters["compose_escape"] = lambda value: str(value).replace("$", "$$")
    # HCL interpolates ${...} and %{...} inside strings; doubling the sigil keeps them literal.
    env.filters["hcl_string"] = lambda value: (
        json.dumps(value, ensure_ascii=False).replace("${", "$${").replace("%{", "%%{")
    )
    return env


def _header(loaded: LoadedSpec, comment: str = "#") -> str:
    return (
        f"{comment} Generated by `stack plan` from {loaded.path.name} (project {loaded.spec.project}).\n"
        f"{comment} Do not edit: change stack.yaml and run `stack plan` again."
    )


# -- versions ------------------------------------------------------------------------


def project_files(loaded: LoadedSpec, exclude: Path | None = None) -> ProjectFiles:
    """The project's files that go into its images (`.stackignore` and the defaults decide)."""
    return ProjectFiles(loaded.root, loaded.path, (exclude,) if exclude is not None else (), tuple(loaded.secret_files))


def project_digest(loaded: LoadedSpec, exclude: Path | None = None) -> str:
    """A hash of everything a replica runs: the project's files and the replica runtime (`serving`).

    A code change, or a new runtime, gives a new image and a rolling update; a log
    file or anything `.stackignore` names does not. `exclude` is the plan's own
    output directory, when it lies inside the project.
    """
    files = project_files(loaded, exclude).digest(cache_root=loaded.root)
    # `tracing` changes what every image installs (OpenTelemetry) and every replica's settings.
    tracing = f"\0{loaded.spec.tracing.model_dump_json()}" if loaded.spec.tracing is not None else ""
    return hashlib.sha256(f"{files}\0{runtime_digest()}{tracing}".encode()).hexdigest()


def runtime_digest() -> str:
    runtime = Path(serving.__file__).parent
    return tree_digest(runtime, package_files(runtime), None)


def control_plane_digest() -> str:
    """A hash of the autoscaler image's code (`stack` and `serving`): a new release, a new image."""
    code = Path(__file__).resolve().parents[1]
    return hashlib.sha256(f"{tree_digest(code, package_files(code), None)}\0{runtime_digest()}".encode()).hexdigest()


def control_plane_requirements() -> list[str]:
    """stack-serve's own dependencies (no extras), from its installed metadata; boto3 for the S3 sources of
    BatchAPI jobs (the controller lists and reads them)."""
    return sorted([*(r for r in metadata.requires("stack-serve") or [] if "extra ==" not in r), "boto3"])


def api_version(api: Api, digest: str) -> str:
    spec_text = api.model_dump_json(by_alias=True)
    return hashlib.sha256(f"{spec_text}\0{digest}".encode()).hexdigest()[:12]


# -- shared per-API values -------------------------------------------------------------


def _api_values(
    loaded: LoadedSpec,
    api: Api,
    digest: str,
    registry: str,
    drain_in_replica: bool,
    keys_file: str,
    model_cache: str | None = None,
    upstreams_file: str | None = None,
    traces_url: str | None = None,
) -> dict[str, Any]:
    """`traces_url`: the tracing collector as the replica reaches it (default: stack.yaml's endpoint)."""
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
    )
    predictor = api.predictor
    endpoint = api.endpoint
    rule = router_rule(endpoint)
    router = f"{project}-{api.name}"
    return {
        "name": api.name,
        "router": router,
        "endpoint": endpoint,
        "rule": rule,
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


# -- Compose -------------------------------------------------------------------------


def build_context(root: Path, image_name: str) -> Path:
    """The directory `stack up` assembles for one image: project copy, runtime, wheelhouse, Dockerfile."""
    return root / BUILD_DIR / image_name


def service_name(api: Api, version: str) -> str:
    # One Compose service per version: a rolling update runs both behind one Traefik service.
    return f"{api.name}-{version}"


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


def plan_compose(
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
    header = _header(loaded)
    apis = []
    files: dict[str, str] = {}
    for api in spec.every_api:
        cached = needs_model_cache(api)
        values = _api_values(
            loaded,
            api,
            digest,
            registry="",
            drain_in_replica=True,
            keys_file=COMPOSE_KEYS_FILE,
            model_cache=MODEL_CACHE if cached else None,
            upstreams_file=f"{COMPOSE_UPSTREAMS_DIR}/{UPSTREAMS_FILE}",
            traces_url=from_container(spec.tracing.traces_url) if spec.tracing else None,
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
            files[f"{api.name}.Dockerfile"] = _dockerfile(env, loaded, api, header)
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
    files["autoscaler.Dockerfile"] = autoscaler_dockerfile(loaded, env)
    control_dir = loaded.root / CONTROL_DIR
    files[KEYS_FILE] = api_keys_text(loaded)  # always: replicas follow keys added, changed or removed
    files["compose.yaml"] = env.get_template("compose/compose.yaml.j2").render(
        keys={"directory": "./keys", "mount": COMPOSE_KEYS_DIR},
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
            "image": autoscaler_image(),
            "config": scaling.to_json(),
            "state_dir": os.path.relpath(loaded.root / AUTOSCALER_STATE_DIR, out_dir),
            "port": AUTOSCALER_PORT,
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
        autoscaler_port=AUTOSCALER_PORT,
    )
    return Plan("compose", files, placement, placement.warnings)


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


def autoscaler_image() -> str:
    # The same code for every project, so one image per machine; tagged by release so
    # plans stay stable, and `stack up` rebuilds it when the code's digest changed.
    return f"stack-autoscaler:{__version__}"


def autoscaler_dockerfile(loaded: LoadedSpec, env: jinja2.Environment | None = None) -> str:
    """The controller/autoscaler image's Dockerfile (every target's controller runs that image)."""
    build = loaded.spec.build
    return (
        (env or template_environment())
        .get_template("compose/autoscaler.Dockerfile.j2")
        .render(header=_header(loaded), base_image=build.base_image, wheelhouse=build.wheelhouse)
    )


def api_dockerfile(loaded: LoadedSpec, api: Api, env: jinja2.Environment | None = None) -> str:
    """The Dockerfile of an API's image, the same for every target that builds one."""
    return _dockerfile(env or template_environment(), loaded, api, _header(loaded))


def _dockerfile(env: jinja2.Environment, loaded: LoadedSpec, api: Api, header: str) -> str:
    return env.get_template("compose/Dockerfile.j2").render(
        header=header,
        base_image=loaded.spec.build.base_image,
        wheelhouse=loaded.spec.build.wheelhouse,
        requirements=loaded.requirements_file(api) is not None,
        runtime_requirements=[json.dumps(r) for r in RUNTIME_REQUIREMENTS],
        replica_port=REPLICA_PORT,
        replica_user=REPLICA_USER,
    )


def _secrets_owner() -> str | None:
    """Who a Compose replica runs as to read the keys file: the image's user where `stack up` runs as
    root (which hands the file to it), else the user that runs it (who owns the file) in the image's group."""
    if os.geteuid() == 0:
        return None
    return f"{os.geteuid()}:{REPLICA_USER}"
