"""The background supervisor of `stack up --local`.

    python -m stack.targets.local.supervisor PATH/TO/stack.yaml

It runs Traefik and every replica as child processes, keeps each API at its
desired count, restarts crashed replicas with back-off, rolls out a new
version without failed requests, and answers a small control API on
127.0.0.1 (status, scale, reload, shutdown) that the `stack` CLI talks to.

Ordering is what keeps requests from failing: a replica joins the router only
after its /readyz answers 200, and leaves the router (confirmed through
Traefik's API) before it is sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from serving.config import CONFIG_ENV
from serving.runner import STARTUP_ERROR_ENV
from serving.supervisor import port_is_free
from stack import routes
from stack.activator import Activator
from stack.atomic import write_json_atomic, write_text_atomic
from stack.autoscale.config import config_of
from stack.autoscale.loop import Autoscaler, SignalSource
from stack.autoscale.signal import PrometheusSignal, ScrapeSignal, Signal
from stack.canary import CanaryRunner, PrometheusSource, ScrapeSource, Source
from stack.errors import StackError
from stack.gateway_errors import serve_errors
from stack.plan.render import api_version, project_digest
from stack.plan.serving import api_keys_text, replica_config
from stack.spec import Api, LoadedSpec, SpecError, load_spec
from stack.spec.units import format_duration
from stack.splits import SplitterConfig, applied, member_services, read_overrides, splitters_of
from stack.targets.gateway import readiness_url, wait_until_routed
from stack.targets.local import traefik
from stack.targets.local.scaler import InProcessScaler
from stack.targets.local.state import LocalPaths, forget
from stack.targets.rollout import Fleet, next_step

LOGGER = logging.getLogger("stack.targets.local")
TICK = 0.2  # seconds between reconcile passes
BACKOFF = (1, 2, 4, 8, 16, 30)  # seconds before restarting a replica that keeps failing
GIVE_UP_AFTER = 5  # consecutive start-up failures before an API is marked failed
ROUTES_HEADER = "Written by the `stack up --local` supervisor whenever a replica joins or leaves."
START_TIMEOUT = 600.0  # seconds a request held for an API scaled to zero waits for a replica
CRASH_WINDOW = 30.0  # a ready replica that dies sooner than this after starting counts toward back-off
STOP_MARGIN = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Replica:
    id: str
    api: str
    version: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path
    state: str = "starting"  # starting | ready | draining
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class ApiState:
    spec: Api
    version: str
    desired: int
    replicas: list[Replica] = field(default_factory=list)
    restarts: int = 0
    failures: int = 0  # consecutive start-up failures
    crash_streak: int = 0  # ready replicas that crashed soon after starting, in a row
    retry_at: float = 0.0
    error: str | None = None
    counter: int = 0
    events: list[str] = field(default_factory=list)
    manual: bool = False  # `stack scale --force` took the API from the autoscaler until the next `stack up`

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state != "draining"]

    def serving(self, routed: set[str]) -> list[Replica]:
        """Ready replicas that Traefik confirmed it sends requests to."""
        return [r for r in self.live() if r.state == "ready" and r.url in routed]

    def event(self, message: str) -> None:
        LOGGER.info(f"{self.spec.name}: {message}")
        self.events = [*self.events[-19:], f"{time.strftime('%H:%M:%S')} {message}"]


class Supervisor:
    def __init__(self, spec_file: Path) -> None:
        self.loaded: LoadedSpec = load_spec(spec_file)
        self.paths = LocalPaths(self.loaded.root, self.loaded.path.name)
        self.apis: dict[str, ApiState] = {}
        self.traefik: asyncio.subprocess.Process | None = None
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.control_port = free_port()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()  # set when a child exits or a stop is asked: reconcile now
        self.session: aiohttp.ClientSession | None = None
        self.routed: dict[str, set[str]] = {}  # api -> server URLs written to the route file
        # api -> server URLs Traefik confirmed it balances over: only these count as ready,
        # so `stack up` never returns, nor the autoscaler count a replica, before requests reach it.
        self.serving: dict[str, set[str]] = {}
        self.updating: set[str] = set()
        self.routes_checked = 0.0  # when the routes file was last compared with what we wrote
        self.errors_port = free_port()
        self.errors_url = f"http://127.0.0.1:{self.errors_port}"  # the gateway's own errors, as JSON
        self.prometheus: asyncio.subprocess.Process | None = None
        self.prometheus_url: str | None = None
        self.notes: list[str] = []  # for `stack up` and `stack status`: e.g. a port that moved
        self.tasks: set[asyncio.Task[None]] = set()  # drains and child watchers: kept, awaited at exit
        self.autoscaler: Autoscaler | None = None
        self.registry = CollectorRegistry()  # the autoscaler's metrics, on the control port's /metrics
        # Requests to an API scaled to zero wait here while a replica starts (at most a start's time).
        self.activator = Activator(self, timeout=START_TIMEOUT, registry=self.registry)
        self.canary: CanaryRunner | None = None  # the splitters' canaries, once Prometheus is known

    # -- life cycle ------------------------------------------------------------------

    async def run(self) -> None:
        self.session = aiohttp.ClientSession()
        self._apply_spec(self.loaded, await asyncio.to_thread(project_digest, self.loaded), first=True)
        self._write_routes()
        await self._start_traefik()
        await self._start_prometheus()
        runners = [
            await serve_errors("127.0.0.1", self.errors_port, self.activator),
            *await self._start_control(),
        ]
        self._write_state()
        self.canary = self._canary_runner()
        loop = asyncio.get_running_loop()
        autoscaler = loop.create_task(self._autoscale_forever())
        heartbeat = loop.create_task(self._heartbeat())
        canaries = loop.create_task(self.canary.run(self.stopping))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                await self._tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), TICK)
        finally:
            heartbeat.cancel()
            autoscaler.cancel()
            canaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await autoscaler
            await self._shutdown()
            for runner in runners:
                await runner.cleanup()
            await self.activator.close()
            self.paths.control_socket.unlink(missing_ok=True)
            await self.session.close()

    def _spawn(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start_traefik(self) -> None:
        spec = self.loaded.spec
        if not port_is_free("0.0.0.0", spec.gateway.port):
            raise StackError(f"gateway port {spec.gateway.port} is already in use; set gateway.port in stack.yaml")
        command = traefik.traefik_command(
            spec.gateway.host or "127.0.0.1",
            spec.gateway.port,
            self.api_port,
            self.metrics_port,
            self.paths.traefik_dir,
            self.paths.logs / "traefik-access.log" if spec.gateway.access_log else None,
        )
        self.traefik = await _start_child(command, self.paths.logs / "traefik.log")

    async def _start_prometheus(self) -> None:
        spec = self.loaded.spec.prometheus
        binary = shutil.which("prometheus")
        if not spec.enabled or binary is None:
            LOGGER.info(
                "Prometheus %s: the autoscaler scrapes the replicas itself",
                "disabled" if not spec.enabled else "not on PATH",
            )
            return
        port = spec.port
        if not port_is_free("127.0.0.1", spec.port):
            port = free_port()
            note = (
                f"Prometheus port {spec.port} is in use: this stack's Prometheus listens on 127.0.0.1:{port} "
                "instead (set prometheus.port in stack.yaml to choose one)"
            )
            LOGGER.warning(note)
            self.notes.append(note)
        directory = self.paths.prometheus_dir
        directory.mkdir(parents=True, exist_ok=True)
        _write_targets(directory / "targets.json", self.loaded.spec.project, {})
        config = directory / "prometheus.yml"
        config.write_text(
            traefik.render_template(
                "prometheus.yml.j2",
                scrape_interval=format_duration(spec.scrape_interval),
                targets_file=str(directory / "targets.json"),
                traefik_metrics_port=self.metrics_port,
                control_port=self.control_port,
            )
        )
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ]
        self.prometheus = await _start_child(command, self.paths.logs / "prometheus.log")
        self.prometheus_url = f"http://127.0.0.1:{port}"
        LOGGER.info(f"Prometheus at {self.prometheus_url}")

    async def _start_control(self) -> list[web.AppRunner]:
        """The control API on a unix socket only this user can open; /metrics alone on TCP, for Prometheus."""
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/scale", self._scale)
        app.router.add_post("/reload", self._reload)
        app.router.add_post("/shutdown", self._shutdown_request)
        control = web.AppRunner(app, access_log=None)
        await control.setup()
        sock = self.paths.control_socket
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock.parent.chmod(0o700)
        sock.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly open to others
        try:
            await web.UnixSite(control, str(sock)).start()
        finally:
            os.umask(old_umask)
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", self._metrics)
        metrics = web.AppRunner(metrics_app, access_log=None)
        await metrics.setup()
        await web.TCPSite(metrics, "127.0.0.1", self.control_port).start()
        return [control, metrics]

    async def _heartbeat(self) -> None:
        """Touch the heartbeat file every second: `stack status` tells when a killed stack died."""
        while True:
            with contextlib.suppress(OSError):
                self.paths.heartbeat.touch()
            await asyncio.sleep(1.0)

    def _write_state(self) -> None:
        write_text_atomic(self.paths.pid_file, f"{os.getpid()}\n")
        write_json_atomic(
            self.paths.state_file,
            {
                "pid": os.getpid(),
                "control_socket": str(self.paths.control_socket),
                "metrics_port": self.control_port,
                "traefik_api_port": self.api_port,
                "traefik_metrics_port": self.metrics_port,
                "gateway_port": self.loaded.spec.gateway.port,
                "project": self.loaded.spec.project,
                "spec_file": str(self.loaded.path),
                "prometheus_url": self.prometheus_url,
                "notes": self.notes,
            },
        )

    async def _shutdown(self) -> None:
        LOGGER.info("shutting down")
        for api in self.apis.values():
            for replica in api.replicas:
                if replica.proc.returncode is None:
                    replica.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max(
            (a.spec.predictor.grace_period + STOP_MARGIN for a in self.apis.values()), default=10
        )
        await asyncio.gather(*(_wait_or_kill(r.proc, deadline) for a in self.apis.values() for r in a.replicas))
        for child in (self.traefik, self.prometheus):
            if child is not None and child.returncode is None:
                child.terminate()
                await _wait_or_kill(child, time.monotonic() + 10)
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        forget(self.paths)

    # -- spec --------------------------------------------------------------------------

    def _apply_spec(self, loaded: LoadedSpec, digest: str, first: bool = False) -> None:
        if loaded.spec.gateway.api_keys:
            write_text_atomic(self.paths.api_keys, api_keys_text(loaded), 0o600)
        else:
            self.paths.api_keys.unlink(missing_ok=True)
        for api in loaded.spec.apis:
            version = api_version(api, digest)
            current = self.apis.get(api.name)
            if current is None:
                self.apis[api.name] = ApiState(api, version, api.autoscaling.initial)
                if not first:
                    self.apis[api.name].event("added")
                continue
            if current.version != version:
                current.event(f"rolling update to version {version}")
                current.failures, current.error, current.retry_at = 0, None, 0.0
                self.updating.add(api.name)
            current.spec, current.version = api, version
            current.manual = False  # `stack up` hands the API back to the autoscaler
            current.desired = min(max(current.desired, api.autoscaling.min_replicas), api.autoscaling.max_replicas)
        for name in [n for n in self.apis if n not in {a.name for a in loaded.spec.apis}]:
            self.apis[name].desired = 0
            self.apis[name].event("removed from stack.yaml; draining")
        self.loaded = loaded

    # -- the reconcile loop ---------------------------------------------------------------

    async def _tick(self) -> None:
        for state in list(self.apis.values()):
            self._reap(state)
            await self._probe(state)
            await self._reconcile(state)
        await self._sync_routes()
        for name in [
            n
            for n, s in self.apis.items()
            if s.desired == 0 and not s.replicas and n not in {a.name for a in self.loaded.spec.apis}
        ]:
            del self.apis[name]

    def _reap(self, state: ApiState) -> None:
        for replica in list(state.replicas):
            code = replica.proc.returncode
            if code is None:
                continue
            state.replicas.remove(replica)
            if replica.state == "draining":
                continue
            if replica.state == "starting":
                state.failures += 1
                state.error = (
                    _startup_error(self._error_file(replica.id))
                    or f"replica {replica.id} exited with code {code} while starting"
                )
                delay = BACKOFF[min(state.failures - 1, len(BACKOFF) - 1)]
                state.retry_at = time.monotonic() + delay
                state.event(f"replica {replica.id} failed to start (exit {code}): {state.error}; retry in {delay}s")
            else:
                state.restarts += 1
                # A replica that keeps crashing soon after it started is replaced with back-off.
                uptime = time.monotonic() - replica.started
                state.crash_streak = state.crash_streak + 1 if uptime < CRASH_WINDOW else 1
                delay = BACKOFF[min(state.crash_streak - 2, len(BACKOFF) - 1)] if state.crash_streak > 1 else 0
                state.retry_at = time.monotonic() + delay
                wait = f" in {delay}s (crashed {state.crash_streak} times in a row)" if delay else ""
                state.event(f"replica {replica.id} exited with code {code}; replacing it{wait}")

    async def _probe(self, state: ApiState) -> None:
        assert self.session is not None
        for replica in [r for r in state.replicas if r.state == "starting"]:
            try:
                async with self.session.get(
                    replica.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)
                ) as response:
                    ready = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ready = False
            if ready:
                replica.state = "ready"
                state.failures, state.error = 0, None
                state.event(f"replica {replica.id} ready after {time.monotonic() - replica.started:.1f}s")

    async def _reconcile(self, state: ApiState) -> None:
        live = state.live()
        new = [r for r in live if r.version == state.version]
        old = [r for r in live if r.version != state.version]
        surge, unavailable = state.spec.update.resolve(max(state.desired, 1))
        can_start = time.monotonic() >= state.retry_at and state.failures < GIVE_UP_AFTER
        if state.failures >= GIVE_UP_AFTER and not any(r.state == "starting" for r in new):
            state.error = state.error or "replicas keep failing to start"
        fleet = Fleet(
            new_ready=sum(r.state == "ready" for r in new),
            new_starting=sum(r.state == "starting" for r in new),
            old_ready=sum(r.state == "ready" for r in old),
            old_starting=sum(r.state == "starting" for r in old),
        )
        step = next_step(fleet, state.desired, surge, unavailable)
        for _ in range(step.start if can_start else 0):
            await self._start_replica(state)
        # Old versions: not-ready ones first, ready ones only while enough others serve.
        retiring = [r for r in old if r.state != "ready"][: step.stop_old_starting]
        retiring += [r for r in old if r.state == "ready"][: step.stop_old_ready]
        for replica in retiring:
            self._drain(state, replica, "replaced by the new version")
        # Scale down: still-starting replicas first, then the newest.
        for replica in sorted(new, key=lambda r: (r.state == "ready", -r.started))[: step.stop_new]:
            self._drain(state, replica, "scaled down")
        if step.done and state.spec.name in self.updating:
            self.updating.discard(state.spec.name)
            state.event("rolling update done")

    def _error_file(self, replica_id: str) -> Path:
        return self.paths.logs / f"{replica_id}.error.json"

    async def _start_replica(self, state: ApiState) -> None:
        state.counter += 1
        replica_id = f"{state.spec.name}-{state.counter}"
        port = free_port()
        config = replica_config(
            self.loaded, state.spec, host="127.0.0.1", port=port, drain_delay=0.0, keys_file=str(self.paths.api_keys)
        )
        log = self.paths.replica_log(replica_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        error_file = self._error_file(replica_id)
        error_file.unlink(missing_ok=True)
        env = {
            **os.environ,
            **state.spec.predictor.env,
            CONFIG_ENV: config.to_json(),
            STARTUP_ERROR_ENV: str(error_file),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for name in self.loaded.secret_env:  # the keys' variables: replicas read the keys file instead
            env.pop(name, None)
        proc = await _start_child([sys.executable, "-m", "serving"], log, env=env, cwd=self.loaded.root)
        state.replicas.append(Replica(replica_id, state.spec.name, state.version, port, proc, log))
        # Its exit wakes the reconcile loop at once: a dead replica leaves the router
        # within milliseconds instead of at the next tick.
        self._spawn(asyncio.get_running_loop().create_task(self._watch(proc)))
        state.event(f"started replica {replica_id} (version {state.version}, port {port})")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.wake.set()

    def _drain(self, state: ApiState, replica: Replica, why: str) -> None:
        was_routed = replica.state == "ready"
        replica.state = "draining"
        state.event(f"draining replica {replica.id}: {why}")
        # Out of the router first; SIGTERM only once Traefik confirms it is gone.
        self._spawn(asyncio.get_running_loop().create_task(self._terminate_when_unrouted(state, replica, was_routed)))

    async def _terminate_when_unrouted(self, state: ApiState, replica: Replica, was_routed: bool) -> None:
        if was_routed:
            await self._sync_routes()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                assert self.session is not None
                live = await traefik.live_servers(self.session, self.api_port, self._router(state.spec))
                if live is not None and replica.url not in live:
                    break
                await asyncio.sleep(0.05)
        if replica.proc.returncode is None:
            replica.proc.send_signal(signal.SIGTERM)

    # -- routes ----------------------------------------------------------------------------

    def _router(self, api: Api) -> str:
        return f"{self.loaded.spec.project}-{api.name}"

    def _routes_intact(self) -> bool:
        """The routes file says what it should now: not truncated or edited by hand, and with the
        splitters' current weights (`stack split` changes them); checked once a second."""
        now = time.monotonic()
        if now - self.routes_checked < 1.0:
            return True
        self.routes_checked = now
        try:
            if (self.paths.traefik_dir / routes.ROUTES_FILE).read_text() == self._render_routes():
                return True
        except OSError:
            pass
        LOGGER.info(f"rewriting the gateway's routes in {self.paths.traefik_dir}")
        return False

    async def _sync_routes(self) -> None:
        wanted = {name: {r.url for r in s.replicas if r.state == "ready"} for name, s in self.apis.items()}
        if wanted == self.routed and self._routes_intact():
            return
        self.routed = wanted
        self._write_routes()
        if self.prometheus is not None:
            _write_targets(self.paths.prometheus_dir / "targets.json", self.loaded.spec.project, wanted)
        # Wait until Traefik serves the new set, so joins and leaves are real when we act on them.
        assert self.session is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            current = {
                name: await traefik.live_servers(self.session, self.api_port, self._router(s.spec))
                for name, s in self.apis.items()
            }
            # An API without replicas is routed to the error service (a JSON 503), not to nothing.
            if all(current[name] == (wanted[name] or {self._empty_url(name)}) for name in current):
                for name in [n for n in wanted if wanted[n] and not self.serving.get(n)]:
                    await self._wait_gateway_serves(self.apis[name].spec)
                self.serving.update(wanted)
                return
            await asyncio.sleep(0.05)
        LOGGER.warning("Traefik did not confirm the new routes within 10s")
        self.serving.update(wanted)  # what the route file says is the best left to go on

    async def _wait_gateway_serves(self, api: Api) -> None:
        """An API's first replica counts once a request through the gateway reaches it."""
        url = readiness_url(self.loaded.spec.gateway.port, api.endpoint)
        if not await asyncio.to_thread(wait_until_routed, url, 10.0):
            LOGGER.warning(f"{api.name}: the gateway did not reach its first replica within 10s")

    def _write_routes(self) -> None:
        routes.write(self.paths.traefik_dir, self._render_routes())

    def _render_routes(self) -> str:
        """The routes file as it should read now: the routed replicas and the splitters' weights."""
        routes_ = [
            routes.Route(
                self._router(state.spec),
                state.spec.endpoint,
                tuple(sorted(self.routed.get(name, set()))),
                activate=name if state.spec.autoscaling.min_replicas == 0 else None,
            )
            for name, state in sorted(self.apis.items())
        ]
        return routes.render(routes_, ROUTES_HEADER, self.errors_url, self._splits())

    def _empty_url(self, name: str) -> str:
        zero = self.apis[name].spec.autoscaling.min_replicas == 0
        return routes.empty_url(routes.Route("", "", activate=name if zero else None), self.errors_url)

    def _splits(self) -> tuple[routes.Split, ...]:
        overrides = read_overrides(self.paths.split_overrides)
        canaries = self.canary.weights() if self.canary else {}
        return applied(self.loaded.spec.project, splitters_of(self.loaded.spec), overrides, canaries)

    # -- canaries -------------------------------------------------------------------------------

    def _splitters(self) -> list[SplitterConfig]:
        """The spec's splitters, each canary tied to the version of its API that runs now."""
        return splitters_of(self.loaded.spec, {name: state.version for name, state in self.apis.items()})

    def _canary_runner(self) -> CanaryRunner:
        assert self.session is not None
        source: Source = (
            PrometheusSource(self.prometheus_url, self.session)
            if self.prometheus_url
            else ScrapeSource(
                self.session,
                lambda api: [r.url for r in self.apis[api].live() if r.state == "ready"] if api in self.apis else [],
                f"http://127.0.0.1:{self.metrics_port}/metrics",
            )
        )
        project = self.loaded.spec.project
        return CanaryRunner(
            self._splitters(),
            self.paths.split_overrides,
            source,
            registry=self.registry,
            overridden=lambda: set(read_overrides(self.paths.split_overrides)),
            services=lambda splitter: member_services(project, splitter),
            busy=lambda api: f"{api} is rolling out its new version" if api in self.updating else None,
        )

    # -- autoscaler -------------------------------------------------------------------------------

    async def _autoscale_forever(self) -> None:
        assert self.session is not None
        if self.prometheus_url:
            source: SignalSource = PrometheusSignal(
                self.prometheus_url, self.session, self.loaded.spec.prometheus.scrape_interval
            )
        else:
            source = _ScrapeSource(ScrapeSignal(self.session, keep=600.0), self)
        self.autoscaler = Autoscaler(
            config_of(self.loaded),
            InProcessScaler(self),
            source,
            registry=self.registry,
            manual=lambda name: name in self.apis and self.apis[name].manual,
            activity=self.activator.last_request.get,
        )
        await self.autoscaler.run(asyncio.Event())

    # -- waking an API scaled to zero (the activator's Waker) ---------------------------------

    def known(self, api: str) -> bool:
        return api in self.apis

    async def activate(self, api: str) -> None:
        state = self.apis[api]
        if state.desired == 0:
            state.desired = 1
            state.failures, state.error, state.retry_at = 0, None, 0.0
            state.event("a request woke it from zero")
            self.wake.set()

    async def ready_url(self, api: str) -> str | None:
        state = self.apis[api]
        ready = [r for r in state.live() if r.state == "ready" and r.version == state.version]
        return ready[0].url if ready else None

    def start_error(self, api: str) -> str | None:
        state = self.apis[api]
        return state.error if state.failures >= GIVE_UP_AFTER else None

    # -- control API ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        apis = []
        for name, state in sorted(self.apis.items()):
            ready = state.serving(self.serving.get(name, set()))
            updating = name in self.updating
            if state.error and not ready:
                status = "error"
            elif updating:
                status = "updating"
            elif len(ready) >= state.desired and state.desired > 0:
                status = "live"
            elif state.desired == 0:
                status = "scaled to zero" if not state.replicas else "scaling to zero"
            else:
                status = "starting"
            apis.append(
                {
                    "name": name,
                    "status": status,
                    "ready": len(ready),
                    "desired": state.desired,
                    "version": state.version,
                    "endpoint": state.spec.endpoint,
                    "restarts": state.restarts,
                    "error": state.error,
                    "autoscaled": state.spec.autoscaled and not state.manual,
                    "autoscaler": self.autoscaler.status().get(name) if self.autoscaler else None,
                    "min_replicas": state.spec.autoscaling.min_replicas,
                    "max_replicas": state.spec.autoscaling.max_replicas,
                    "events": state.events,
                    "replicas": [
                        {
                            "id": r.id,
                            "pid": r.proc.pid,
                            "port": r.port,
                            "state": r.state,
                            "version": r.version,
                            "uptime_s": round(time.monotonic() - r.started, 1),
                        }
                        for r in state.replicas
                    ],
                }
            )
        return {
            "project": self.loaded.spec.project,
            "gateway_port": self.loaded.spec.gateway.port,
            "pid": os.getpid(),
            "target": "local",
            "notes": self.notes,
            "apis": apis,
        }

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def _scale(self, request: web.Request) -> web.Response:
        body = await request.json()
        state = self.apis.get(body.get("api", ""))
        if state is None:
            return web.json_response({"error": f"no API named {body.get('api')!r}"}, status=404)
        replicas = int(body["replicas"])
        bounds = state.spec.autoscaling
        if body.get("autoscaler"):  # the autoscaler itself, from another process (SupervisorScaler)
            state.event(f"autoscaler: {state.desired} -> {replicas}: {body.get('reason', '')}")
            state.desired = min(max(replicas, bounds.min_replicas), bounds.max_replicas)
            self.wake.set()
            return web.json_response({"ok": True})
        if state.spec.autoscaled and not state.manual and not body.get("force"):
            message = (
                f"the autoscaler owns {state.spec.name} (min_replicas {bounds.min_replicas} != max_replicas "
                f"{bounds.max_replicas}); add --force to take it over until the next `stack up`"
            )
            return web.json_response({"error": message}, status=409)
        if not body.get("force") and not bounds.min_replicas <= replicas <= bounds.max_replicas:
            allowed = f"{bounds.min_replicas}..{bounds.max_replicas}"
            message = f"{replicas} is outside min_replicas..max_replicas ({allowed}); add --force to override"
            return web.json_response({"error": message}, status=400)
        state.desired = replicas
        state.manual = state.manual or bool(body.get("force"))
        state.failures, state.retry_at = 0, 0.0
        state.event(f"scaled to {replicas} ({body.get('reason', 'stack scale')})")
        return web.json_response({"ok": True})

    async def _reload(self, request: web.Request) -> web.Response:
        try:
            loaded = await asyncio.to_thread(load_spec, self.loaded.path)
        except SpecError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._apply_spec(loaded, await asyncio.to_thread(project_digest, loaded))
        if self.autoscaler is not None:
            self.autoscaler.configure(config_of(loaded))
        if self.canary is not None:
            self.canary.configure(self._splitters())
        return web.json_response({"ok": True})

    def _stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    async def _shutdown_request(self, request: web.Request) -> web.Response:
        self._stop()
        return web.json_response({"ok": True})


class _ScrapeSource:
    """Without Prometheus: scrape the ready replicas on every read."""

    def __init__(self, scrape: ScrapeSignal, supervisor: Supervisor) -> None:
        self.scrape = scrape
        self.supervisor = supervisor

    async def read(self, api: str, window: float, short_window: float) -> Signal:
        state = self.supervisor.apis[api]
        problem = await self.scrape.sample(api, [r.url for r in state.live() if r.state == "ready"])
        if problem:
            return Signal(None, None, problem)
        return self.scrape.read(api, window, short_window)


def _write_targets(path: Path, project: str, routed: dict[str, set[str]]) -> None:
    groups = [
        {"targets": [url.removeprefix("http://")], "labels": {"api": api, "project": project}}
        for api, urls in sorted(routed.items())
        for url in sorted(urls)
    ]
    write_json_atomic(path, groups)


async def _start_child(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """A child that dies with this supervisor (through stack.targets.local.guard), its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    guarded = [sys.executable, "-m", "stack.targets.local.guard", str(os.getpid()), "--", *command]
    with open(log, "ab") as out:
        return await asyncio.create_subprocess_exec(
            *guarded, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env, cwd=cwd
        )


async def _wait_or_kill(proc: asyncio.subprocess.Process, deadline: float) -> None:
    try:
        await asyncio.wait_for(proc.wait(), max(deadline - time.monotonic(), 0.1))
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _startup_error(error_file: Path) -> str | None:
    """The reason a replica wrote for not starting (serving.runner.report_startup_error)."""
    try:
        data = json.loads(error_file.read_text())
    except (OSError, ValueError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        asyncio.run(Supervisor(Path(args[0]).resolve()).run())
    except StackError as exc:
        LOGGER.error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
