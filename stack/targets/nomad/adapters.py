"""The Nomad target's adapters for the control plane (stack.control.runtime).

The controller is the autoscaler job. Nomad keeps the replicas itself (its
scheduler replaces a lost allocation), so the fleet only publishes the
splitters' routes when the controller starts; counts change through the job
scale API, an API at zero is woken the same way, and the gateway's splitter
routes and the canaries' state live in Nomad Variables (the job has no disk).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from stack.control.autoscale.signal import PrometheusSignal
from stack.control.batch.jobs import BatchWorkers, keys_file
from stack.control.canary_sources import PrometheusSource
from stack.control.routing import RouteTable
from stack.control.runtime import Adapters, ControlSettings
from stack.control.tenants import keys_in
from stack.errors import StackError
from stack.targets.nomad.activation import NomadWaker
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.batch_workers import NomadWorkers
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.fleet import NomadFleet
from stack.targets.nomad.plan import NOMAD_KEYS_FILE
from stack.targets.nomad.routes import affinity_variable, splits_yaml
from stack.targets.nomad.scaler import NomadScaler
from stack.targets.nomad.settings import NomadControlSettings
from stack.targets.nomad.splits import NomadCanaryStore, NomadSplits

# A new allocation may answer a request before the controller's next look at the catalogue (every 2 s) and
# its first probe: a lease it holds goes unreported that long.
LEASE_GRACE = 15.0


class NomadRouteSink:
    """The splitters' routes and the affinity APIs' routers into the gateway's variable (`stack up --nomad`
    writes the splitters, or removes the variable when the spec has none; the replicas' own routes come
    from Nomad's service catalogue). The variable is read before each write: one `stack up` or `stack
    split` rewrote is put right at the next (the affinity loop publishes every few seconds)."""

    def __init__(self, splits: NomadSplits) -> None:
        self.splits = splits

    def write(self, table: RouteTable) -> bool:
        if not table.splits and not any(route.pins for route in table.routes):
            return False
        text = splits_yaml(table.splits, table.routes, table.auth)
        if text == self.splits.read_yaml():
            return False
        self.splits.write_yaml(text)
        return True


@contextlib.asynccontextmanager
async def adapters(
    settings: ControlSettings, own: NomadControlSettings, session: aiohttp.ClientSession
) -> AsyncIterator[Adapters]:
    config, prometheus = settings.config, settings.prometheus_url
    if config is None or prometheus is None:
        raise StackError("the Nomad controller needs its config and Prometheus' URL (--prometheus)")
    connection = NomadSettings.from_env(own.nomad_addr)
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
        keys=keys_in(NOMAD_KEYS_FILE),
        lease_grace=LEASE_GRACE,
        affinity_out=lambda text: nomad.put_variable(affinity_variable(config.project), {"status": text}),
        listen=("0.0.0.0", settings.metrics_port),
        errors=("0.0.0.0", own.activator_port) if own.activator_port is not None else None,
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
