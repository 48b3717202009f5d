"""The local target's plan: where the GPU APIs' replica slots go on this host, each API's version, the
gateway's routes. It renders no file ahead: the supervisor writes Traefik's and Prometheus' configuration
when it starts them, once their ports are known, and the routes as replicas come and go."""

from __future__ import annotations

from stack.plan.gpus import Gpu, place
from stack.plan.plan import Plan
from stack.plan.versions import project_digest, versions
from stack.routes import api_routes
from stack.spec import LoadedSpec


def plan(loaded: LoadedSpec, host_gpus: list[Gpu] | None = None) -> Plan:
    """`host_gpus`: this host's GPUs (stack.plan.gpus.host_gpus); None: unknown (a GPU API is then an error)."""
    digest = project_digest(loaded)
    placement = place(loaded.spec.apis, host_gpus)
    routes = api_routes(loaded.spec)
    return Plan("local", digest, versions(loaded, digest), {}, routes, {}, placement, placement.warnings)
