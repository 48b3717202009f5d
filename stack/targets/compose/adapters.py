"""The Compose target's adapters for the control plane (stack.control.runtime).

The controller runs in the stack's autoscaler service, the one container with
the engine's socket: the fleet is `ComposeFleet` (routes, Prometheus
targets, killed replicas brought back, APIs at zero woken), the scaler copies
and stops containers with Compose's own labels, everything else is read from
Prometheus and kept in the state directory shared with the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import docker

from stack.atomic import write_text_atomic
from stack.control.autoscale.signal import PrometheusSignal
from stack.control.batch.jobs import BatchWorkers, keys_file
from stack.control.canary import STATE_FILE, FileStore
from stack.control.canary_sources import PrometheusSource
from stack.control.routing import FileRouteSink
from stack.control.runtime import Adapters, ControlSettings
from stack.control.tenants import keys_in
from stack.errors import StackError
from stack.plan.values import ERRORS_PORT
from stack.splits import FileSplits
from stack.targets.compose.batch_workers import ComposeWorkers
from stack.targets.compose.desired import AFFINITY_FILE, DECISIONS_FILE
from stack.targets.compose.fleet import ComposeFleet
from stack.targets.compose.plan import COMPOSE_KEYS_FILE, CONTROLLER_HOST
from stack.targets.compose.scaler import ComposeScaler
from stack.targets.compose.settings import ComposeSettings

ROUTES_DIR = "routes"  # under the control directory: Traefik's file provider
UPSTREAMS_DIR = "upstreams"  # under it too: where the replicas' calls go (serving.calls), read-only for them
HEADER = "Written by the stack's controller (the autoscaler service) whenever a replica joins or leaves."


@contextlib.asynccontextmanager
async def adapters(
    settings: ControlSettings, own: ComposeSettings, session: aiohttp.ClientSession
) -> AsyncIterator[Adapters]:
    config, prometheus, state_dir, control_dir = (
        settings.config,
        settings.prometheus_url,
        settings.state_dir,
        own.control_dir,
    )
    if config is None or prometheus is None or state_dir is None:
        raise StackError("the Compose controller needs its config, Prometheus' URL and --state-dir")
    try:
        scaler = ComposeScaler(config.project, state_dir=state_dir)
    except docker.errors.DockerException as exc:
        raise StackError(f"cannot reach the Docker engine to scale {config.project}: {exc}") from None
    controller = ComposeFleet(
        config.project,
        own.network,
        own.replica_port,
        config.routed,
        control_dir,
        state_dir,
        scaler,
    )
    yield Adapters(
        config,
        fleet=controller,
        scaler=scaler,
        waker=controller,
        signal=PrometheusSignal(prometheus, session, config.scrape_interval),
        metrics=PrometheusSource(prometheus, session),
        canaries=FileStore(state_dir / STATE_FILE),
        splits=FileSplits(state_dir),
        routes=FileRouteSink(
            control_dir / ROUTES_DIR,
            HEADER,
            f"http://{CONTROLLER_HOST}:{ERRORS_PORT}",
            config.tls,
            upstreams=control_dir / UPSTREAMS_DIR,
        ),
        decisions=state_dir / DECISIONS_FILE,
        affinity_out=lambda text: write_text_atomic(state_dir / AFFINITY_FILE, text),
        keys=keys_in(COMPOSE_KEYS_FILE),
        listen=("0.0.0.0", settings.metrics_port),
        errors=("0.0.0.0", ERRORS_PORT),
        prometheus_url=lambda: prometheus,
        batch=BatchWorkers(
            state_dir / "jobs.db",
            ComposeWorkers(config.project, f"http://{CONTROLLER_HOST}:{ERRORS_PORT}", scaler.client),
            keys_file(COMPOSE_KEYS_FILE),
        ),
    )
