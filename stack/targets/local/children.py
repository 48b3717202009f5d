"""The local stack's child processes: Traefik, Prometheus and the replicas, each dying with the supervisor.

`LocalServices` starts the gateway (the real Traefik binary) and, where its
binary is on PATH, Prometheus, on ports chosen here; `start_child` is how
every child starts (through stack.targets.local.guard, so it gets SIGTERM
when the supervisor dies), its output appended to a log file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from serving.supervisor import port_is_free
from stack.atomic import write_json_atomic
from stack.errors import StackError
from stack.plan.gateway import gateway_read_timeout, traefik_tracing_args
from stack.spec import LoadedSpec
from stack.spec.units import format_duration
from stack.status import ComponentStatus
from stack.targets.local import traefik
from stack.targets.local.state import LocalPaths
from stack.tls import AcmePaths, traefik_args

LOGGER = logging.getLogger("stack.targets.local")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_child(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """A child that dies with this supervisor (through stack.targets.local.guard), its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    guarded = [sys.executable, "-m", "stack.targets.local.guard", str(os.getpid()), "--", *command]
    with open(log, "ab") as out:
        return await asyncio.create_subprocess_exec(
            *guarded, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env, cwd=cwd
        )


def _exited(child: asyncio.subprocess.Process | None) -> str:
    if child is None or child.returncode is None:
        return ""
    code = child.returncode
    return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"


async def wait_or_kill(proc: asyncio.subprocess.Process, deadline: float) -> None:
    try:
        await asyncio.wait_for(proc.wait(), max(deadline - time.monotonic(), 0.1))
    except TimeoutError:
        proc.kill()
        await proc.wait()


def write_targets(path: Path, project: str, routed: dict[str, set[str]]) -> None:
    """Prometheus' file_sd: every routed replica with its API."""
    groups = [
        {"targets": [url.removeprefix("http://")], "labels": {"api": api, "project": project}}
        for api, urls in sorted(routed.items())
        for url in sorted(urls)
    ]
    write_json_atomic(path, groups)


class WatchedDirectories:
    """Directories a child process watches (Traefik's routes, Prometheus' targets), and whether one was removed
    or replaced since: the child's watcher died with the old one and sees nothing of the new.

    Each is held open from `watch` on: the removed directory's inode stays taken, so a new directory cannot
    get the same number and pass for the old one (a bare inode comparison misses exactly that), and the
    held one's link count falls to 0 when it is removed.
    """

    def __init__(self) -> None:
        self._held: dict[Path, int] = {}

    def watch(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        old = self._held.pop(directory, None)
        if old is not None:
            os.close(old)
        self._held[directory] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def replaced(self, directory: Path) -> bool:
        fd = self._held.get(directory)
        if fd is None:
            return False
        held = os.fstat(fd)
        try:
            now = directory.stat()
        except OSError:
            return True
        return held.st_nlink == 0 or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def close(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


@dataclass
class LocalServices:
    """The processes beside the replicas, and the ports the supervisor chose for them (all on 127.0.0.1).

    `keep` (once a second) starts again what died — Traefik, Prometheus — and Traefik also when
    its routes directory was removed (its file watcher dies with it) or its command changed (a
    `stack up` that changed the gateway's port, read timeout or access log).
    """

    loaded: LoadedSpec
    paths: LocalPaths
    api_port: int = field(default_factory=free_port)  # Traefik's API: which servers it balances over now
    metrics_port: int = field(default_factory=free_port)  # Traefik's metrics
    control_port: int = field(default_factory=free_port)  # the controller's /metrics (Prometheus scrapes it)
    errors_port: int = field(default_factory=free_port)  # the gateway's own JSON errors and the activator
    probe_port: int = field(default_factory=free_port)  # Traefik's plain entrypoint for the stack's own checks
    traefik: asyncio.subprocess.Process | None = None
    prometheus: asyncio.subprocess.Process | None = None
    prometheus_url: str | None = None
    notes: list[str] = field(default_factory=list)  # for `stack up` and `stack status`: e.g. a port that moved
    restarts: dict[str, int] = field(default_factory=dict)  # gateway / prometheus -> times started again
    problems: dict[str, str] = field(default_factory=dict)  # gateway / prometheus -> why it is not running
    # Told the new URL when Prometheus had to start again on another port (the control plane's readers).
    on_prometheus_moved: list[Callable[[str], None]] = field(default_factory=list)
    _traefik_command: list[str] = field(default_factory=list)
    _watched: WatchedDirectories = field(default_factory=lambda: WatchedDirectories())

    @property
    def errors_url(self) -> str:
        return f"http://127.0.0.1:{self.errors_port}"

    @property
    def targets_file(self) -> Path:
        return self.paths.prometheus_dir / "targets.json"

    async def start(self) -> None:
        await self._start_traefik()
        await self._start_prometheus()

    async def stop(self) -> None:
        for child in (self.traefik, self.prometheus):
            if child is not None and child.returncode is None:
                child.terminate()
                await wait_or_kill(child, time.monotonic() + 10)
        self._watched.close()

    async def keep(self, routed: dict[str, set[str]]) -> None:
        """Start again a gateway or Prometheus that exited, or whose directory was removed; `routed`:
        the replicas Prometheus should scrape."""
        traefik_why = _exited(self.traefik) or self._moved(self.paths.traefik_dir)
        if not traefik_why and self.traefik is not None and self._command() != self._traefik_command:
            traefik_why = "its configuration changed"
        if traefik_why:
            await self._restart("gateway", self.traefik, traefik_why, self._start_traefik)
        if self.prometheus is not None or "prometheus" in self.problems:
            why = _exited(self.prometheus) or self._moved(self.paths.prometheus_dir)
            if why:
                await self._restart("prometheus", self.prometheus, why, self._start_prometheus)
                if self.prometheus is not None:
                    write_targets(self.targets_file, self.loaded.spec.project, routed)

    async def _restart(
        self,
        name: str,
        child: asyncio.subprocess.Process | None,
        why: str,
        start: Callable[[], Awaitable[None]],
    ) -> None:
        if child is not None and child.returncode is None:
            child.terminate()
            await wait_or_kill(child, time.monotonic() + 10)
        LOGGER.warning(f"the stack's {name} ({why}): starting it again")
        try:
            await start()
        except (StackError, OSError) as exc:
            self.problems[name] = f"{why}, and it cannot start again: {exc}"
            return
        self.problems.pop(name, None)
        self.restarts[name] = self.restarts.get(name, 0) + 1

    def _moved(self, directory: Path) -> str:
        return f"{directory} was removed" if self._watched.replaced(directory) else ""

    def _watch(self, directory: Path) -> None:
        self._watched.watch(directory)

    def _command(self) -> list[str]:
        gateway = self.loaded.spec.gateway
        return traefik.traefik_command(
            gateway.host or "127.0.0.1",
            gateway.port,
            self.api_port,
            self.metrics_port,
            self.paths.traefik_dir,
            self.paths.logs / "traefik-access.log" if gateway.access_log else None,
            gateway_read_timeout(self.loaded.spec),
            self.probe_port,
            self._tls_args() + traefik_tracing_args(self.loaded.spec),
        )

    def _tls_args(self) -> list[str]:
        gateway = self.loaded.spec.gateway
        if gateway.tls is None:
            return []
        acme = None
        if gateway.tls.acme is not None:
            # Kept beside the state, not in it: a lost .stack/local does not cost the certificates.
            self.paths.acme_storage.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            acme = AcmePaths(str(self.paths.acme_storage))
        return traefik_args(gateway.tls, gateway.http_port, acme, gateway.host or "127.0.0.1")

    @property
    def check_port(self) -> int:
        """Where the stack's own checks reach the routes: the gateway's port, or with TLS (which may demand
        a client certificate) the plain entrypoint on 127.0.0.1."""
        gateway = self.loaded.spec.gateway
        return self.probe_port if gateway.tls is not None else gateway.port

    def components(self) -> list[ComponentStatus]:
        """The gateway and Prometheus, as `stack status` shows them."""
        shown = [("gateway", "Traefik", self.traefik)]
        if self.prometheus is not None or "prometheus" in self.problems:
            shown.append(("prometheus", "Prometheus", self.prometheus))
        return [
            ComponentStatus(
                name=name,
                running=child is not None and child.returncode is None and name not in self.problems,
                detail=f"{label}, pid {child.pid}" if child is not None else label,
                problem=self.problems.get(name)
                or (f"{_exited(child)}; the supervisor starts it again within a second" if _exited(child) else ""),
                restarts=self.restarts.get(name, 0),
            )
            for name, label, child in shown
        ]

    async def _start_traefik(self) -> None:
        gateway = self.loaded.spec.gateway
        if not port_is_free("0.0.0.0", gateway.port):
            raise StackError(f"gateway port {gateway.port} is already in use; set gateway.port in stack.yaml")
        self._watch(self.paths.traefik_dir)
        self._traefik_command = self._command()
        env = None
        tls = self.loaded.spec.gateway.tls
        if tls is not None and tls.acme is not None and tls.acme.ca_file:
            # Traefik's ACME client (lego) trusts this CA for the ACME server (a private one: Pebble, step-ca).
            env = {**os.environ, "LEGO_CA_CERTIFICATES": str((self.loaded.root / tls.acme.ca_file).resolve())}
        self.traefik = await start_child(self._traefik_command, self.paths.logs / "traefik.log", env=env)

    async def _start_prometheus(self) -> None:
        spec = self.loaded.spec.prometheus
        binary = shutil.which("prometheus")
        if not spec.enabled or binary is None:
            LOGGER.info(
                "Prometheus %s: the autoscaler scrapes the replicas itself",
                "disabled" if not spec.enabled else "not on PATH",
            )
            return
        # Started again: on its old port, unless something else took it (two stacks starting at once).
        wanted = int(self.prometheus_url.rsplit(":", 1)[1]) if self.prometheus_url is not None else spec.port
        port = wanted
        if not port_is_free("127.0.0.1", wanted):
            port = free_port()
            note = (
                f"Prometheus port {wanted} is in use: this stack's Prometheus listens on 127.0.0.1:{port} "
                "instead (set prometheus.port in stack.yaml to choose one)"
            )
            LOGGER.warning(note)
            self.notes[:] = [n for n in self.notes if not n.startswith("Prometheus port ")] + [note]
        directory = self.paths.prometheus_dir
        self._watch(directory)
        write_targets(self.targets_file, self.loaded.spec.project, {})
        config = directory / "prometheus.yml"
        config.write_text(
            traefik.render_template(
                "prometheus.yml.j2",
                scrape_interval=format_duration(spec.scrape_interval),
                targets_file=str(self.targets_file),
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
        self.prometheus = await start_child(command, self.paths.logs / "prometheus.log")
        moved = self.prometheus_url is not None and not self.prometheus_url.endswith(f":{port}")
        self.prometheus_url = f"http://127.0.0.1:{port}"
        LOGGER.info(f"Prometheus at {self.prometheus_url}")
        for follow in self.on_prometheus_moved if moved else []:
            follow(self.prometheus_url)
