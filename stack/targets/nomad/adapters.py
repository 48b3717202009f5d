"""The Nomad target's adapters for the control plane (stack.control.runtime).

The controller is the autoscaler job. Nomad keeps the replicas itself (its
scheduler replaces a lost allocation), so the fleet only publishes the
splitters' routes when the controller starts; counts change through the job
scale API, an API at zero is woken the same way, and the gateway's splitter
routes and the canaries' state live in Nomad Variables (the job has no disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from stack.autoscale.signal import PrometheusSignal
from stack.batch.jobs import BatchWorkers, keys_file
from stack.canary_sources import PrometheusSource
from stack.control.liveness import Decision, Probed
from stack.control.routing import RouteTable
from stack.control.runtime import Adapters, ControlPlane, ControlSettings
from stack.errors import StackError
from stack.plan.nomad import NOMAD_KEYS_FILE
from stack.plan.nomad_routes import splits_yaml
from stack.targets.nomad.activation import NomadWaker
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.batch_workers import NomadWorkers
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.scaler import NomadScaler
from stack.targets.nomad.splits import NomadCanaryStore, NomadSplits, rolling_out


class NomadFleet:
    def __init__(self, nomad: NomadApi, project: str) -> None:
        self.nomad = nomad
        self.project = project

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        await plane.routes.refresh()  # a canary that starts (a new version) sets its first step now
        await stopping.wait()

    def manual(self, api: str) -> bool:
        return False  # NomadScaler reports a count set by hand as busy (the job's scaling events say so)

    def rolling_out(self, api: str) -> str | None:
        return rolling_out(self.nomad, f"{self.project}-{api}")

    def probe_targets(self) -> list[Probed]:
        return []  # Nomad asks /healthz itself (the job's service check) and restarts a stuck task (check_restart)

    async def replace(self, replica: Probed, decision: Decision) -> None:
        raise NotImplementedError("Nomad replaces its own allocations")

    def events(self, api: str) -> list[str]:
        return []  # Nomad keeps its allocations' events: `stack status --nomad API` shows each one's last


class NomadRouteSink:
    """The splitters' routes into the gateway's variable (`stack up --nomad` writes it, or removes it
    when the spec has no splitter; the replicas' own routes come from Nomad's service catalogue)."""

    def __init__(self, splits: NomadSplits) -> None:
        self.splits = splits
        self.written: str | None = None

    def write(self, table: RouteTable) -> bool:
        if not table.splits:
            return False
        text = splits_yaml(table.splits)
        if text == self.written:
            return False
        self.splits.write_yaml(text)
        self.written = text
        return True


@contextlib.asynccontextmanager
async def nomad_adapters(settings: ControlSettings, session: aiohttp.ClientSession) -> AsyncIterator[Adapters]:
    config, prometheus = settings.config, settings.prometheus_url
    if config is None or prometheus is None:
        raise StackError("the Nomad controller needs its config and Prometheus' URL (--prometheus)")
    connection = NomadSettings.from_env(settings.nomad_addr)
    nomad = NomadApi(connection)
    splits = NomadSplits(nomad, config.project)
    scaler = NomadScaler(config.project, connection.client())
    yield Adapters(
        config,
        fleet=NomadFleet(nomad, config.project),
        scaler=scaler,
        waker=NomadWaker(config, scaler.client),
        signal=PrometheusSignal(prometheus, session, config.scrape_interval),
        metrics=PrometheusSource(prometheus, session),
        canaries=NomadCanaryStore(splits),
        splits=splits,
        routes=NomadRouteSink(splits),
        listen=("0.0.0.0", settings.metrics_port),
        errors=("0.0.0.0", settings.activator_port) if settings.activator_port is not None else None,
        prometheus_url=lambda: prometheus,
        # The dashboard is reached through the gateway: its data asks for an API key (none: refused).
        dashboard_keys=keys_file(NOMAD_KEYS_FILE),
        # BatchAPIs: the queue on the allocation's sticky disk (the planned job passes --state-dir /alloc/data).
        batch=BatchWorkers(
            (settings.state_dir or Path(os.environ.get("NOMAD_ALLOC_DIR", "/alloc")) / "data") / "jobs.db",
            NomadWorkers(nomad, config.project),
            keys_file(NOMAD_KEYS_FILE),
        )
        if config.batch
        else None,
    )
