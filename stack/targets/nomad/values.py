"""An API's values on Nomad beyond the shared ones: its resources, its GPUs (whole devices per allocation,
several replica processes sharing one for a fraction) and its service's tags, which carry its routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stack.routes import ACTIVATE, too_large_rule
from stack.spec import Api

NOMAD_HEALTH = {"interval": "3s", "timeout": "2s"}


@dataclass(frozen=True)
class NomadGpu:
    """An API's GPUs as Nomad's device plugin hands them out: whole devices per allocation."""

    devices: int  # nvidia/gpu devices per allocation
    replicas: int = 1  # replica processes per allocation (a fractional `gpu`: they share its device)
    memory_mib: int | None = None  # the device must have at least this much memory

    def note(self, api: Api) -> str:
        allocations = -(-api.autoscaling.max_replicas // self.replicas)
        return (
            f"API {api.name}: compute.gpu {api.compute.gpu:g} on Nomad: Nomad schedules whole devices, so each "
            f"allocation holds one GPU (a whole GPU, or a MIG instance where the node's device plugin offers "
            f"them) and runs {self.replicas} replica processes on it; counts move in allocations of "
            f"{self.replicas} (max_replicas {api.autoscaling.max_replicas}: up to {allocations} allocation(s))"
        )


def nomad_gpu(api: Api) -> NomadGpu:
    gpu, memory = api.compute.gpu, api.compute.gpu_mem
    if not gpu:
        return NomadGpu(0)
    if gpu >= 1:
        return NomadGpu(int(gpu), 1, -(-memory // 1024**2) if memory else None)
    replicas = max(int(1 / gpu + 1e-9), 1)
    return NomadGpu(1, replicas, -(-(memory * replicas) // 1024**2) if memory else None)


def nomad_resources(values: dict[str, Any], api: Api) -> NomadGpu:
    values["cpu_mhz"] = int((api.compute.cpu or 1.0) * 1000)
    values["memory_mb"] = (api.compute.mem or 1024**3) // 1024**2
    share = nomad_gpu(api)
    values["gpu"], values["gpu_memory_mib"] = share.devices, share.memory_mib
    return share


def nomad_tags(values: dict[str, Any], project: str, members: list[str], auth: bool = False) -> list[str]:
    """Traefik's routes for an API, from its Nomad service's tags; `members`: its services in splitters; `auth`:
    named keys, checked by the controller first (the `<router>-auth` middleware of the gateway's auth.yml)."""
    router = values["router"]
    first = f"{router}-auth@file," if auth else ""
    health = (("path", "/readyz"), ("interval", NOMAD_HEALTH["interval"]), ("timeout", NOMAD_HEALTH["timeout"]))
    return [
        f"stack.project={project}",
        f"stack.api={values['name']}",
        f"stack.version={values['version']}",
        "traefik.enable=true",
        f"traefik.http.routers.{router}.entrypoints=web",
        f"traefik.http.routers.{router}.rule={values['rule']}",
        f"traefik.http.routers.{router}.middlewares={first}{router}-strip,{router}-retry",
        f"traefik.http.routers.{router}.service={router}",
        f"traefik.http.middlewares.{router}-strip.stripprefix.prefixes={values['endpoint']}",
        f"traefik.http.middlewares.{router}-retry.retry.attempts=3",
        f"traefik.http.middlewares.{router}-retry.retry.initialinterval=100ms",
        # Traefik's Nomad provider does not see Nomad's check status: probe readiness itself. The same
        # replicas are a service under each splitter the API is in: the gateway counts those requests apart.
        *(
            f"traefik.http.services.{service}.loadbalancer.{key}={value}"
            for service in (router, *members)
            for key, value in (*(("healthcheck." + k, v) for k, v in health), ("strategy", values["load_balancer"]))
        ),
        # A declared body over max_body_size: a 413 from the gateway at once (stack.routes._too_large; on
        # Nomad in Traefik's words, there being no error service beside every gateway).
        f"traefik.http.routers.{router}-too-large.entrypoints=web",
        f"traefik.http.routers.{router}-too-large.rule={too_large_rule(values['endpoint'], values['max_body_size'])}",
        f"traefik.http.routers.{router}-too-large.priority={len(values['rule']) + 2}",  # above affinity routers
        f"traefik.http.routers.{router}-too-large.middlewares={router}-body-limit",
        f"traefik.http.routers.{router}-too-large.service={router}",
        f"traefik.http.middlewares.{router}-body-limit.buffering.maxrequestbodybytes={values['max_body_size']}",
    ]


def nomad_upstreams(project: str, apis: list[Api], api: Api) -> str:
    """The upstreams file of an API's calls (serving.calls) as a Nomad template ([[ ]] delimiters): each
    callee's instances from Nomad's service discovery, re-rendered as they come and go, and the
    activator (the autoscaler job's service) for a callee that scales to zero."""
    by_name = {a.name: a for a in apis}
    entries = []
    for name in api.calls:
        callee = by_name[name]
        servers = _listed(f"{project}-{name}", "")
        zero = callee.autoscaling.min_replicas == 0
        activators = _listed(f"{project}-activator", f"{ACTIVATE}/{name}") if zero else ""
        strategy = callee.networking.load_balancer
        # A space between JSON's `[` and the template's `[[`: Go's lexer would take `[[[` as `[[` + `[`.
        entries.append(
            f'"{name}": {{"servers": [ {servers} ], "activators": [ {activators} ], "strategy": "{strategy}"}}'
        )
    return '{"apis": {' + ", ".join(entries) + "}}\n"


def _listed(service: str, path: str) -> str:
    return (
        f'[[ range $i, $s := nomadService "{service}" ]][[ if $i ]],[[ end ]]'
        f'"http://[[ .Address ]]:[[ .Port ]]{path}"[[ end ]]'
    )
