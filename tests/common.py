"""What every test shares: where things are, free ports, the real server as a subprocess."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from waits import holds, until

ROOT = Path(__file__).resolve().parents[1]


PREDICTORS = Path(__file__).resolve().parent / "predictors"


EXAMPLES = ROOT / "examples"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()


def _worker() -> tuple[int, int]:
    """(this pytest-xdist worker's number, how many there are); (0, 1) without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return (int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0), max(count, 1)


_PORTS = random.Random()


_GIVEN: set[int] = set()  # never the same port twice in one run, even if its first user has not bound it yet


def free_port() -> int:
    """A port no one listens on, below the kernel's ephemeral range: a port the OS hands out as
    the source of some outgoing connection meanwhile would turn a later bind (docker-proxy's,
    a replica's) into "address already in use"."""
    below, above = (max(_EPHEMERAL[0] - 12000, 1024), _EPHEMERAL[0]), (_EPHEMERAL[1] + 1, 65536)
    low, high = below if below[1] - below[0] >= 2000 else above
    # Each xdist worker draws from its own share of the range: two workers never pick the same port.
    worker, workers = _worker()
    share = (high - low) // workers
    low, high = low + worker * share, low + (worker + 1) * share
    for _ in range(200 if high - low >= 2000 else 0):
        port = _PORTS.randrange(low, high)
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as sock:  # and on every address (a published port binds 0.0.0.0)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str = "/", **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.post(self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.get(self.url + path, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop within {timeout}s; logs:\n{self.logs()}") from None

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit; logs:\n{self.logs()}") from None


def serving_config(predictor: str | Path, **fields: Any) -> str:
    return json.dumps({"predictor_path": str(predictor), "api": fields.pop("api", "test"), **fields})


class ServerFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[Server] = []

    def start(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        wait_ready: bool = True,
        timeout: float = 120,
    ) -> Server:
        port = port or free_port()
        log_path = self.tmp_path / f"server-{len(self.servers)}.log"
        full_env = {**os.environ, **(env or {})}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [c.replace("{port}", str(port)) for c in command], stdout=log, stderr=subprocess.STDOUT, env=full_env
            )
        server = Server(proc, port, log_path)
        self.servers.append(server)
        if wait_ready:
            _wait_ready(server, timeout)
        return server

    def serving(
        self, predictor: str | Path, *, wait_ready: bool = True, env: dict[str, str] | None = None, **fields: Any
    ) -> Server:
        """`python -m serving` with a config built from `fields`."""
        port = fields.pop("port", None) or free_port()
        fields.setdefault("host", "127.0.0.1")
        fields.setdefault("drain_delay", 0)
        config = serving_config(predictor, port=port, **fields)
        return self.start(
            [sys.executable, "-m", "serving"],
            env={"STACK_SERVING_CONFIG": config, **(env or {})},
            port=port,
            wait_ready=wait_ready,
        )

    def stack_serve(
        self,
        path: str | Path,
        *args: str,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> Server:
        return self.start(
            [sys.executable, "-m", "stack.cli", "serve", str(path), "--port", "{port}", *args],
            wait_ready=wait_ready,
            env=env,
            timeout=timeout,
        )

    def close(self) -> None:
        # SIGTERM starts the drain; a second SIGTERM cuts its delay short (tests need no drain here).
        live = [s for s in self.servers if s.proc.poll() is None]
        for server in live:
            server.proc.terminate()
        for server in live:
            try:
                server.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                server.proc.terminate()
        for server in live:
            try:
                server.proc.wait(10)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def _wait_ready(server: Server, timeout: float) -> None:
    def ready() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}; logs:\n{server.logs()}")
        return holds(lambda: requests.get(server.url + "/readyz", timeout=1).status_code == 200)()

    until(ready, lambda: f"the server to be ready; logs:\n{server.logs()}", timeout)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require_binary(name: str) -> str:
    """The path of a program the test needs, or a skip naming how to get it."""

    found = shutil.which(name)
    if found is None:
        how = {
            "promtool": "Debian's prometheus package (`apt-get install prometheus`; .ci/run installs it)",
            "prometheus": "Debian's prometheus package (`apt-get install prometheus`; .ci/run installs it)",
            "pebble": "Debian's pebble package (`apt-get install pebble`; .ci/run installs it)",
            "chromium": "Debian's chromium package (`apt-get install chromium`; .ci/run installs it)",
            "chromedriver": "Debian's chromium-driver package (`apt-get install chromium-driver`; .ci/run installs it)",
        }.get(name, "its package")
        pytest.skip(f"{name} is not on PATH: install {how}")
    return found
