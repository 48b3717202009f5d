"""`stack autoscale`: the control loop as a long-running process.

It reads Prometheus, drives the Compose or Nomad scaler, and answers on one
port: `/metrics` (its own metrics), `/status` (the last decisions, as JSON)
and `/healthz`. A state directory shared with the host carries the decisions
for `stack status` and the APIs `stack scale --force` took over by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stack.autoscale.config import AutoscalerConfig
from stack.autoscale.loop import Autoscaler
from stack.autoscale.policy import POLICIES
from stack.autoscale.scaler import Scaler
from stack.autoscale.signal import PrometheusSignal
from stack.errors import StackError

LOGGER = logging.getLogger("stack.autoscale")
DECISIONS_FILE = "decisions.json"
MANUAL_FILE = "manual.json"
CONTROLLER_HOST = "autoscaler"  # the Compose service's name: its address on the stack's network
ERRORS_PORT = 9101  # the gateway's own errors as JSON (stack.gateway_errors), for Traefik only


@dataclass(frozen=True)
class Control:
    """Where the Compose controller writes the gateway's routes and Prometheus' targets."""

    directory: Path
    network: str
    replica_port: int


def manual_apis(state_dir: Path | None) -> set[str]:
    """APIs `stack scale --force` set by hand; the autoscaler leaves them alone until the next `stack up`."""
    if state_dir is None:
        return set()
    try:
        return set(json.loads((state_dir / MANUAL_FILE).read_text()))
    except (OSError, ValueError):
        return set()


def make_scaler(target: str, project: str, nomad_addr: str | None, state_dir: Path | None = None) -> Scaler:
    if target == "compose":
        import docker

        from stack.targets.compose.scaler import ComposeScaler

        try:
            return ComposeScaler(project, state_dir=state_dir)
        except docker.errors.DockerException as exc:
            raise StackError(f"cannot reach the Docker engine to scale {project}: {exc}") from None
    from stack.targets.nomad.connection import NomadSettings
    from stack.targets.nomad.scaler import NomadScaler

    return NomadScaler(project, NomadSettings.from_env(nomad_addr).client())


async def serve(
    config: AutoscalerConfig,
    scaler: Scaler,
    prometheus_url: str,
    metrics_port: int,
    state_dir: Path | None,
    policy: str = "stack",
    control: Control | None = None,
    activator_port: int | None = None,
    nomad_addr: str | None = None,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with aiohttp.ClientSession() as session:
        autoscaler = Autoscaler(
            config,
            scaler,
            PrometheusSignal(prometheus_url, session, config.scrape_interval),
            policy=POLICIES[policy],
            manual=lambda api: api in manual_apis(state_dir),
            state_file=state_dir / DECISIONS_FILE if state_dir else None,
        )
        runner = await _start_http(autoscaler, metrics_port)
        names = ", ".join(a.name for a in config.apis) or "none"
        LOGGER.info(f"autoscaling {names} of {config.project} from {prometheus_url}; metrics on :{metrics_port}")
        tasks = [autoscaler.run(stopping)]
        errors: web.AppRunner | None = None
        if control is not None:
            from stack.activator import Activator
            from stack.canary import CanaryRunner, PrometheusSource
            from stack.gateway_errors import serve_errors
            from stack.splits import member_services, read_overrides
            from stack.targets.compose.controller import ComposeController
            from stack.targets.compose.scaler import ComposeScaler

            assert isinstance(scaler, ComposeScaler) and state_dir is not None
            controller = ComposeController(
                config.project,
                control.network,
                control.replica_port,
                config.routed,
                config.splitters,
                control.directory,
                state_dir,
                scaler,
                autoscaler.registry,
                f"http://{CONTROLLER_HOST}:{ERRORS_PORT}",
            )
            # The gateway's own errors and, for APIs scaled to zero, the activator.
            activator = Activator(controller, registry=autoscaler.registry)
            canary = CanaryRunner(
                config.splitters,
                state_dir,
                PrometheusSource(prometheus_url, session),
                registry=autoscaler.registry,
                overridden=lambda: set(read_overrides(state_dir)),
                services=lambda splitter: member_services(config.project, splitter),
                busy=controller.rolling_out,
            )
            controller.canary_weights = canary.weights
            tasks.append(canary.run(stopping))
            autoscaler.activity = activator.last_request.get
            errors = await serve_errors("0.0.0.0", ERRORS_PORT, activator)
            LOGGER.info(f"routing and keeping {len(config.routed)} API(s) of {config.project}")
            tasks.append(controller.run(stopping))
        elif activator_port is not None:
            from stack.activator import Activator
            from stack.gateway_errors import serve_errors
            from stack.targets.nomad.activation import NomadWaker
            from stack.targets.nomad.scaler import NomadScaler

            assert isinstance(scaler, NomadScaler)
            activator = Activator(NomadWaker(config, scaler.client), registry=autoscaler.registry)
            autoscaler.activity = activator.last_request.get
            errors = await serve_errors("0.0.0.0", activator_port, activator)
            LOGGER.info(f"activator for APIs scaled to zero on :{activator_port}")
        if control is None and config.splitters:
            from stack.targets.nomad.scaler import NomadScaler

            if isinstance(scaler, NomadScaler):  # Compose runs them in the controller (above)
                registry = autoscaler.registry
                tasks.append(_nomad_canaries(config, session, prometheus_url, nomad_addr, registry, stopping))
        try:
            await asyncio.gather(*tasks)
        finally:
            await runner.cleanup()
            if errors is not None:
                await errors.cleanup()


async def _nomad_canaries(
    config: AutoscalerConfig,
    session: aiohttp.ClientSession,
    prometheus_url: str,
    nomad_addr: str | None,
    registry: CollectorRegistry,
    stopping: asyncio.Event,
) -> None:
    """On Nomad the splitters' canaries and observed shares run here; weights go to the gateway's variable."""
    from stack.canary import CanaryRunner, PrometheusSource
    from stack.splits import member_services
    from stack.targets.nomad.api import NomadApi
    from stack.targets.nomad.connection import NomadSettings
    from stack.targets.nomad.splits import NomadCanaryStore, NomadSplits, rolling_out

    nomad = NomadApi(NomadSettings.from_env(nomad_addr))
    splits = NomadSplits(nomad, config.project)
    runner = CanaryRunner(
        config.splitters,
        NomadCanaryStore(splits),
        PrometheusSource(prometheus_url, session),
        registry=registry,
        overridden=lambda: set(splits.overrides()),
        services=lambda splitter: member_services(config.project, splitter),
        busy=lambda api: rolling_out(nomad, f"{config.project}-{api}"),
    )

    async def push() -> None:
        await asyncio.to_thread(splits.write_routes, config.splitters, runner.weights())

    runner.on_change = push
    await push()  # a canary that starts (a new version) sets its first step now
    await runner.run(stopping)


async def _start_http(autoscaler: Autoscaler, port: int) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(autoscaler.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def status(request: web.Request) -> web.Response:
        return web.json_response(autoscaler.status())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with contextlib.suppress(OSError):
        await web.TCPSite(runner, "0.0.0.0", port).start()
        return runner
    raise SystemExit(f"autoscaler metrics port {port} is already in use; pass --metrics-port")
