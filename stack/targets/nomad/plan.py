"""The Nomad target's plan: a job per API (and per BatchAPI's workers), the gateway's, Prometheus' and the
controller's jobs — HCL the user reads, and the JSON the Nomad API takes, derived from that HCL so the two
never disagree (stack.targets.nomad.jobs)."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from stack.control.autoscale.config import config_of
from stack.plan.gateway import gateway_read_timeout, traefik_tls_args, traefik_tracing_args
from stack.plan.images import (
    CONTROLLER_DOCKERFILE,
    REPLICA_USER,
    api_dockerfile,
    api_dockerfile_name,
    controller_dockerfile,
    controller_image,
)
from stack.plan.plan import Plan
from stack.plan.serving import REPLICA_PORT
from stack.plan.templates import header as file_header
from stack.plan.templates import template_environment
from stack.plan.values import CONTROLLER_PORT, DEFAULT_IMAGES, ERRORS_PORT, api_values
from stack.plan.versions import api_version, project_digest
from stack.routes import Route, activator_fallback, api_routes, auth_middleware, member_service
from stack.spec import Api, LoadedSpec, Spec
from stack.spec.units import format_duration, parse_duration
from stack.splits import split_router, splitters_of
from stack.targets.nomad.jobs import hcl_to_job
from stack.targets.nomad.routes import routes_variable, routes_yaml
from stack.targets.nomad.values import NOMAD_HEALTH, nomad_gpu, nomad_resources, nomad_tags, nomad_upstreams

NOMAD_UPSTREAMS_FILE = "/local/upstreams.json"
NOMAD_KEYS_FILE = "/secrets/api_keys"  # rendered by a Nomad template from the job's Nomad Variable
MIN_NOMAD_PROGRESS = 60.0  # Nomad's progress_deadline must leave room for healthy_deadline and min_healthy_time


def tls_variable(project: str) -> str:
    """The Nomad Variable of the gateway's TLS: under the Traefik job's group, which only that job reads."""
    return f"nomad/jobs/{project}-traefik/traefik"


def keys_variable(job_id: str) -> str:
    """The Nomad Variable holding a job's API keys: under nomad/jobs/JOB, which only that job may read."""
    return f"nomad/jobs/{job_id}"


def plan(
    loaded: LoadedSpec,
    *,
    nomad_addr: str = "http://127.0.0.1:4646",
    datacenters: tuple[str, ...] = ("*",),
    registry: str = "",
    images: dict[str, str] | None = None,
) -> Plan:
    spec = loaded.spec
    env = template_environment()
    digest = project_digest(loaded)
    header = file_header(loaded)
    project = spec.project
    registry = f"{registry.rstrip('/')}/" if registry else ""
    all_images = {**DEFAULT_IMAGES, **(images or {})}
    files: dict[str, str] = {}
    notes: list[str] = []
    api_images: dict[str, str] = {}  # API -> the image its allocations pull

    def job(job_id: str) -> dict[str, Any]:
        return {"id": job_id, "datacenters": list(datacenters)}

    for api in spec.apis:
        # On Nomad the drain window is shutdown_delay: Nomad deregisters the
        # service first, so the replica itself need not wait after SIGTERM.
        values = api_values(
            loaded,
            api,
            digest,
            registry,
            drain_in_replica=False,
            keys_file=NOMAD_KEYS_FILE,
            upstreams_file=NOMAD_UPSTREAMS_FILE,
        )
        api_images[api.name] = values["image"]
        if api.predictor.image is None:  # `stack up --nomad` builds it from this and pushes it
            files[api_dockerfile_name(api)] = api_dockerfile(loaded, api, env)
        values["keys_variable"] = keys_variable(f"{project}-{api.name}")  # always: keys may come and go
        # Liveness: /healthz failing for health_check_timeout in a row restarts the task (check_restart).
        interval = parse_duration(NOMAD_HEALTH["interval"])
        values["liveness"] = {
            "limit": max(2, math.ceil(api.predictor.health_check_timeout / interval)),
            "grace": "30s",
        }
        values["upstreams_template"] = nomad_upstreams(project, spec.apis, api) if api.calls else None
        members = [
            member_service(split_router(project, x.name), values["router"])
            for x in spec.splitters
            if any(a.name == api.name for a in x.apis)
        ]
        values["tags"] = nomad_tags(values, project, members, auth=bool(spec.gateway.keys))
        # Named keys with a concurrency limit: the replica releases each request's lease at the controller.
        values["leases"] = any(k.concurrency for k in spec.gateway.keys)
        values["nomad_autoscaler"] = (
            {
                "query": f'sum(predictor_requests_in_flight{{api="{api.name}"}})',
                "target": f"{api.target_concurrency:g}",
                "evaluation_interval": format_duration(max(spec.prometheus.scrape_interval * 2, 10.0)),
                "cooldown": format_duration(api.autoscaling.upscale_stabilization_period),
            }
            if api.autoscaled and api.autoscaling.engine == "nomad-autoscaler"
            else None
        )
        share = nomad_resources(values, api)
        if share.replicas > 1:
            # Nomad hands out whole devices: one allocation holds one GPU and runs `replicas` replica
            # processes on it; counts are in allocations.
            config = json.loads(values["serving_json"])
            config["processes_per_replica"] *= share.replicas
            values["serving_json"] = json.dumps(config, sort_keys=True, separators=(",", ":"))
            for key in ("init_replicas", "min_replicas", "max_replicas"):
                values[key] = -(-values[key] // share.replicas)
            notes.append(share.note(api))
        surge, _unavailable = api.update.resolve(api.autoscaling.initial)
        job_values = job(f"{project}-{api.name}")
        # update.progress_deadline: Nomad needs healthy_deadline < progress_deadline, both well past
        # min_healthy_time; a deployment that misses it is reverted (auto_revert).
        progress = nomad_progress_deadline(api)
        job_values["update"] = {
            "max_parallel": max(1, surge),
            "min_healthy_time": "5s",
            "healthy_deadline": format_duration(progress - 30),
            "progress_deadline": format_duration(progress),
        }
        files[f"{project}-{api.name}.nomad.hcl"] = env.get_template("nomad/api.nomad.hcl.j2").render(
            header=header,
            project=project,
            job=job_values,
            api=values,
            replica_port=REPLICA_PORT,
            replica_user=REPLICA_USER,
            health=NOMAD_HEALTH,
        )
    for api in spec.batch_apis:  # the controller registers a batch job from this for each of its jobs
        values = api_values(loaded, api, digest, registry, drain_in_replica=False, keys_file=NOMAD_KEYS_FILE)
        api_images[api.name] = values["image"]
        if api.predictor.image is None:  # `stack up --nomad` builds it from this and pushes it
            files[api_dockerfile_name(api)] = api_dockerfile(loaded, api, env)
        nomad_resources(values, api)
        files[f"{project}-{api.name}-worker.nomad.hcl"] = env.get_template("nomad/batch-worker.nomad.hcl.j2").render(
            header=header, project=project, job=job(f"{project}-{api.name}"), api=values
        )
    scrape_interval = format_duration(spec.prometheus.scrape_interval)
    prometheus_config = env.get_template("nomad/prometheus.yml.j2").render(
        header="# Rendered into the Prometheus job by `stack plan`.",
        project=project,
        nomad_addr=nomad_addr,
        scrape_interval=scrape_interval,
    )
    common = {"header": header, "project": project, "nomad_addr": nomad_addr, "images": all_images}
    zero = [
        Route(f"{project}-{a.name}", a.endpoint, activate=a.name) for a in spec.apis if a.autoscaling.min_replicas == 0
    ] + [Route(f"{project}-{a.name}", a.endpoint, jobs=a.name) for a in spec.batch_apis]
    fallback = yaml.safe_dump(activator_fallback(zero, f"{project}-activator@nomad"), sort_keys=True) if zero else ""
    named = bool(spec.gateway.keys)
    auth_routes = auth_template(project, spec) if named else ""
    versions = {api.name: api_version(api, digest) for api in spec.apis}
    splitters = splitters_of(spec, versions)
    if splitters:
        # What `stack up --nomad` writes into the gateway's variable (the spec's weights).
        files[f"{project}-routes.yml"] = routes_yaml(project, splitters, {}, {}, auth=named)
    files[f"{project}-traefik.nomad.hcl"] = env.get_template("nomad/traefik.nomad.hcl.j2").render(
        **common,
        job=job(f"{project}-traefik"),
        gateway=spec.gateway,
        read_timeout=gateway_read_timeout(spec),
        fallback=fallback.rstrip("\n"),
        auth_routes=auth_routes.rstrip("\n"),
        # splitters and the affinity APIs' routers per value (the controller writes them)
        splits_variable=routes_variable(project)
        if splitters or any(a.networking.affinity for a in spec.apis)
        else None,
        # With TLS the file provider reads the task's secrets directory (tls.yml holds the key).
        routes_dir="secrets/routes" if spec.gateway.tls else "local/routes",
        tls_variable=tls_variable(project) if spec.gateway.tls else None,
        tls_args=traefik_tls_args(spec, "/alloc/data/acme.json", "/secrets/acme-ca.pem"),
        tracing_args=traefik_tracing_args(spec),
        acme_ca=bool(spec.gateway.tls and spec.gateway.tls.acme and spec.gateway.tls.acme.ca_file),
    )
    files[f"{project}-prometheus.nomad.hcl"] = env.get_template("nomad/prometheus.nomad.hcl.j2").render(
        **common,
        job=job(f"{project}-prometheus"),
        prometheus={"port": spec.prometheus.port, "retention": format_duration(spec.prometheus.retention)},
        prometheus_config=prometheus_config.rstrip("\n"),
    )
    per_allocation = {api.name: nomad_gpu(api).replicas for api in spec.apis}
    scaling = config_of(loaded, versions=versions, per_unit=per_allocation)
    # The autoscaler job also runs the splitters' canaries and measures their observed shares, routes the
    # values of APIs with model affinity, and decides for the gateway on named keys.
    if scaling.apis or scaling.splitters or scaling.batch or any(a.affinity for a in scaling.routed) or named:
        files[CONTROLLER_DOCKERFILE] = controller_dockerfile(loaded, env)  # `stack up --nomad` builds and pushes it
        files[f"{project}-autoscaler.nomad.hcl"] = env.get_template("nomad/autoscaler.nomad.hcl.j2").render(
            **common,
            job=job(f"{project}-autoscaler"),
            autoscaler={
                "image": f"{registry}{controller_image()}",
                "config": scaling.to_json(),
                "port": CONTROLLER_PORT,
                "activator_port": ERRORS_PORT if zero or named else None,
                "batch": bool(spec.batch_apis),  # the jobs' queue on the allocation's sticky disk
                "keys_variable": batch_keys_variable(project),
                "dashboard": bool(spec.gateway.all_keys),  # behind the gateway only with keys to check
                "replica_user": REPLICA_USER,
            },
        )
    # The JSON the Nomad API takes, derived from the HCL above so the two never disagree.
    for name in [n for n in files if n.endswith(".nomad.hcl")]:
        files[name.removesuffix(".nomad.hcl") + ".json"] = (
            json.dumps({"Job": hcl_to_job(files[name])}, indent=2, sort_keys=True) + "\n"
        )
    every = {api.name: api_version(api, digest) for api in spec.every_api}
    return Plan("nomad", digest, every, api_images, api_routes(spec), files, notes=tuple(notes))


def batch_keys_variable(project: str) -> str:
    """The API keys the controller checks a BatchAPI's clients and the dashboard against (its own job's path)."""
    return f"nomad/jobs/{project}-autoscaler/api_keys"


def auth_template(project: str, spec: Spec) -> str:
    """The gateway's forwardAuth middlewares for named keys (stack.routes._auth), one per API and splitter
    router, as a Nomad template: the controller's address comes from its activator service."""
    # A raw string (backticks) in Go's template language: the job's JSON keeps it as it is.
    address = f"http://[[ range nomadService `{project}-activator` ]][[ .Address ]]:[[ .Port ]][[ end ]]"
    routers = [f"{project}-{a.name}" for a in spec.apis] + [split_router(project, s.name) for s in spec.splitters]
    middlewares: dict[str, Any] = {}
    for router in routers:
        middlewares.update(auth_middleware(router, address))
    return yaml.safe_dump({"http": {"middlewares": middlewares}}, sort_keys=True, width=1000)


def nomad_progress_deadline(api: Api) -> float:
    """The job's update.progress_deadline (seconds): the API's, at least what Nomad's other deadlines need."""
    return max(api.update.progress_deadline, MIN_NOMAD_PROGRESS)
