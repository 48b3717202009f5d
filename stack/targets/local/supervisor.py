"""The background supervisor of `stack up --local`: the local stack's controller.

    python -m stack.targets.local.supervisor PATH/TO/stack.yaml

It is the control-plane runtime (stack.control.runtime) with the local
target's adapters: Traefik and Prometheus as child processes (children), the
replicas as processes reconciled by the fleet (fleet, router), and a control
API on a unix socket that the `stack` CLI talks to (control_api). The
autoscaler, the canaries and the activator are the runtime's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp

from stack.atomic import write_json_atomic, write_text_atomic
from stack.autoscale.config import config_of
from stack.autoscale.signal import PrometheusSignal, ScrapeSignal, Signal
from stack.batch.jobs import BatchWorkers
from stack.canary import STATE_FILE, FileStore
from stack.canary_sources import PrometheusSource, ScrapeSource
from stack.control.liveness import Decision, Probed
from stack.control.routing import FileRouteSink, GatewayRoutes
from stack.control.runtime import Adapters, ControlPlane, ControlSettings, run_control
from stack.errors import StackError
from stack.plan.gpus import read_placement
from stack.plan.render import project_digest
from stack.spec import load_spec
from stack.splits import FileSplits
from stack.targets import open_control
from stack.targets.local.batch_workers import LocalWorkers
from stack.targets.local.children import LocalServices
from stack.targets.local.control_api import ControlApi
from stack.targets.local.fleet import LocalFleet, write_keys
from stack.targets.local.state import LocalPaths, forget
from stack.tls import tls_files

LOGGER = logging.getLogger("stack.targets.local")
ROUTES_HEADER = "Written by the `stack up --local` supervisor whenever a replica joins or leaves."
START_TIMEOUT = 600.0  # seconds a request held for an API scaled to zero waits for a replica


class Supervisor:
    """The local stack's `Fleet` for the control plane: the replica fleet, its control API, its state files."""

    def __init__(self, fleet: LocalFleet, services: LocalServices, paths: LocalPaths) -> None:
        self.fleet = fleet
        self.services = services
        self.paths = paths
        self.stopping = asyncio.Event()

    def manual(self, api: str) -> bool:
        return self.fleet.manual(api)

    def rolling_out(self, api: str) -> str | None:
        return self.fleet.rolling_out(api)

    def probe_targets(self) -> list[Probed]:
        return self.fleet.probe_targets()

    async def replace(self, replica: Probed, decision: Decision) -> None:
        await self.fleet.replace(replica, decision)

    def events(self, api: str) -> list[str]:
        state = self.fleet.apis.get(api)
        return list(state.events) if state is not None else []

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        self.fleet.router.routes = plane.routes
        self.fleet.liveness = plane.liveness
        control = ControlApi(self.fleet, plane, self.services.notes, self._stop)
        runner = await control.start(self.paths.control_socket)
        self._write_state()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            await self.fleet.reconcile(stopping)
        finally:
            heartbeat.cancel()
            await runner.cleanup()
            self.paths.control_socket.unlink(missing_ok=True)

    def _stop(self) -> None:
        self.stopping.set()
        self.fleet.wake.set()

    async def _heartbeat(self) -> None:
        """Every second: touch the heartbeat file (`stack status` tells when a killed stack died), put
        back a lost or corrupt state or pid file, and start again a gateway or Prometheus that died."""
        while not self.stopping.is_set():
            with contextlib.suppress(OSError):
                self.paths.heartbeat.parent.mkdir(parents=True, exist_ok=True)
                self.paths.heartbeat.touch()
                self._repair_state()
                write_keys(self.paths, self.fleet.loaded, only_if_missing=True)
            try:
                await self.services.keep(self.fleet.router.routed)
            except Exception:  # the next second tries again; the reason is in the log
                LOGGER.exception("could not start the stack's gateway or Prometheus again")
            await asyncio.sleep(1.0)

    def _state(self) -> dict[str, object]:
        services = self.services
        return {
            "pid": os.getpid(),
            "control_socket": str(self.paths.control_socket),
            "metrics_port": services.control_port,
            "traefik_api_port": services.api_port,
            "traefik_metrics_port": services.metrics_port,
            "gateway_port": services.loaded.spec.gateway.port,
            "check_port": services.check_port,
            "project": services.loaded.spec.project,
            "spec_file": str(services.loaded.path),
            "prometheus_url": services.prometheus_url,
            "notes": services.notes,
        }

    def _repair_state(self) -> None:
        """Rewrite the pid and state files when they no longer say this (truncated, removed, another pid)."""
        try:
            pid_ok = self.paths.pid_file.read_text().strip() == str(os.getpid())
        except OSError:
            pid_ok = False
        try:
            state_ok = json.loads(self.paths.state_file.read_text()) == self._state()
        except (OSError, ValueError):
            state_ok = False
        if not (pid_ok and state_ok):
            LOGGER.info("state files lost or changed behind the supervisor's back: writing them again")
            self._write_state()

    def _write_state(self) -> None:
        self.paths.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.paths.pid_file, f"{os.getpid()}\n")
        write_json_atomic(self.paths.state_file, self._state())


class _ScrapeSignal:
    """Without Prometheus: scrape the ready replicas on every read."""

    def __init__(self, scrape: ScrapeSignal, fleet: LocalFleet) -> None:
        self.scrape = scrape
        self.fleet = fleet

    async def read(self, api: str, window: float, short_window: float) -> Signal:
        problem = await self.scrape.sample(api, self.fleet.ready_urls(api))
        if problem:
            return Signal(None, None, problem)
        return self.scrape.read(api, window, short_window)


@contextlib.asynccontextmanager
async def local_adapters(settings: ControlSettings, session: aiohttp.ClientSession) -> AsyncIterator[Adapters]:
    """The local stack's processes, started here and stopped when the controller ends."""
    if settings.spec_file is None:
        raise StackError("the local supervisor needs its stack.yaml")
    loaded = load_spec(settings.spec_file)
    paths = LocalPaths(loaded.root, loaded.path.name)
    services = LocalServices(loaded, paths)
    routes = FileRouteSink(
        paths.traefik_dir,
        ROUTES_HEADER,
        services.errors_url,
        tls_files(loaded.root, loaded.spec.gateway.tls),
        upstreams=paths.upstreams,
    )
    fleet = LocalFleet(loaded, paths, services, session, routes)
    placement = read_placement(paths.placement)
    slots = placement.slot_devices()
    fleet.apply_spec(loaded, await asyncio.to_thread(project_digest, loaded), first=True, slots=slots)
    config = config_of(loaded, slots, versions=fleet.versions())
    splits = FileSplits(paths.split_overrides)
    # The routes file is there before Traefik starts: it serves the APIs' JSON 503 until replicas are ready.
    GatewayRoutes(config, routes, splits.overrides, dict).publish({})
    try:
        await services.start()
        if services.prometheus_url:
            signal_source: PrometheusSignal | _ScrapeSignal = PrometheusSignal(
                services.prometheus_url, session, loaded.spec.prometheus.scrape_interval
            )
            metrics: PrometheusSource | ScrapeSource = PrometheusSource(services.prometheus_url, session)
            services.on_prometheus_moved += [_follow(signal_source), _follow(metrics)]
        else:
            signal_source = _ScrapeSignal(ScrapeSignal(session, keep=600.0), fleet)
            metrics = ScrapeSource(session, fleet.ready_urls, f"http://127.0.0.1:{services.metrics_port}/metrics")
        yield Adapters(
            config,
            fleet=Supervisor(fleet, services, paths),
            scaler=fleet,
            waker=fleet,
            signal=signal_source,
            metrics=metrics,
            canaries=FileStore(paths.split_overrides / STATE_FILE),
            splits=splits,
            routes=routes,
            listen=("127.0.0.1", services.control_port),
            errors=("127.0.0.1", services.errors_port),
            prometheus_url=lambda: services.prometheus_url,
            start_timeout=START_TIMEOUT,
            batch=BatchWorkers(
                paths.jobs,
                LocalWorkers(lambda: fleet.loaded, paths, services.errors_url),
                lambda: [key.encode() for key in fleet.loaded.spec.gateway.api_keys],
            ),
        )
    finally:
        await services.stop()
        forget(paths)


def _follow(reader: PrometheusSignal | PrometheusSource | _ScrapeSignal | ScrapeSource) -> Callable[[str], None]:
    """Point a reader of Prometheus at its new address."""

    def follow(url: str) -> None:
        reader.url = url  # type: ignore[union-attr]

    return follow


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    settings = ControlSettings(spec_file=Path(args[0]).resolve())
    try:
        asyncio.run(run_control(open_control("local", settings)))
    except StackError as exc:
        LOGGER.error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
