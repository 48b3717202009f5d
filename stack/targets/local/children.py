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
from dataclasses import dataclass, field
from pathlib import Path

from serving.supervisor import port_is_free
from stack.atomic import write_json_atomic
from stack.errors import StackError
from stack.spec import LoadedSpec
from stack.spec.units import format_duration
from stack.targets.local import traefik
from stack.targets.local.state import LocalPaths

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


@dataclass
class LocalServices:
    """The processes beside the replicas, and the ports the supervisor chose for them (all on 127.0.0.1)."""

    loaded: LoadedSpec
    paths: LocalPaths
    api_port: int = field(default_factory=free_port)  # Traefik's API: which servers it balances over now
    metrics_port: int = field(default_factory=free_port)  # Traefik's metrics
    control_port: int = field(default_factory=free_port)  # the controller's /metrics (Prometheus scrapes it)
    errors_port: int = field(default_factory=free_port)  # the gateway's own JSON errors and the activator
    traefik: asyncio.subprocess.Process | None = None
    prometheus: asyncio.subprocess.Process | None = None
    prometheus_url: str | None = None
    notes: list[str] = field(default_factory=list)  # for `stack up` and `stack status`: e.g. a port that moved

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

    async def _start_traefik(self) -> None:
        gateway = self.loaded.spec.gateway
        if not port_is_free("0.0.0.0", gateway.port):
            raise StackError(f"gateway port {gateway.port} is already in use; set gateway.port in stack.yaml")
        command = traefik.traefik_command(
            gateway.host or "127.0.0.1",
            gateway.port,
            self.api_port,
            self.metrics_port,
            self.paths.traefik_dir,
            self.paths.logs / "traefik-access.log" if gateway.access_log else None,
        )
        self.traefik = await start_child(command, self.paths.logs / "traefik.log")

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
        self.prometheus_url = f"http://127.0.0.1:{port}"
        LOGGER.info(f"Prometheus at {self.prometheus_url}")
