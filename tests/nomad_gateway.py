"""The Nomad contract tests' gateway: the real Traefik binary with the planned Traefik job's flags, reading the
stand-in's service catalogue, and the routes variable rendered into its file provider as Nomad's template does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import ServerFactory, free_port
from nomad_standin import NomadStandIn

from stack.targets.local.traefik import traefik_binary
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.splits import routes_variable


def start_gateway(
    plan: Any, standin: NomadStandIn, routes_dir: Path, servers: ServerFactory, project: str = "ns"
) -> str:
    """Traefik with the planned job's flags; the stand-in has no event stream, so it polls each second."""
    args = json.loads(plan.files[f"{project}-traefik.json"])["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]["args"]
    port = free_port()
    command = [traefik_binary()]
    for arg in args:
        if arg.startswith("--entrypoints.web.address="):
            arg = f"--entrypoints.web.address=127.0.0.1:{port}"
        elif arg.startswith("--entrypoints.probe.address="):  # a fixed port: two gateways at once would share it
            arg = f"--entrypoints.probe.address=127.0.0.1:{free_port()}"
        elif arg.startswith("--entrypoints.metrics.address="):
            arg = f"--entrypoints.metrics.address=127.0.0.1:{free_port()}"
        elif arg.startswith("--providers.nomad.endpoint.address="):
            arg = f"--providers.nomad.endpoint.address={standin.address}"
        elif arg == "--providers.nomad.watch=true":
            arg = "--providers.nomad.refreshInterval=1s"
        elif arg.startswith("--providers.file.directory="):
            arg = f"--providers.file.directory={routes_dir}"
        command.append(arg)
    servers.start(command, port=port, wait_ready=False)
    return f"http://127.0.0.1:{port}"


def render_variable(api: NomadApi, routes_dir: Path, project: str = "ns") -> None:
    """What Nomad's template does when the variable changes."""
    items = api.get_variable(routes_variable(project)) or {}
    routes_dir.mkdir(exist_ok=True)
    (routes_dir / ".splits.tmp").write_text(items.get("routes", ""))
    (routes_dir / ".splits.tmp").replace(routes_dir / "splits.yml")
