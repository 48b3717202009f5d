"""What the CLI does for `--local`: start or update the supervisor, and talk to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from serving.supervisor import port_is_free
from stack.errors import StackError
from stack.local.state import LocalPaths, pid_alive, read_state
from stack.spec import LoadedSpec

READY_TIMEOUT = 600.0  # seconds `stack up --local` waits for replicas (model loads can be slow)


class LocalStack:
    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self.paths = LocalPaths(loaded.root)

    # -- talking to a running supervisor -------------------------------------------

    def state(self) -> dict[str, Any] | None:
        return read_state(self.paths)

    def _require(self) -> dict[str, Any]:
        state = self.state()
        if state is None:
            raise StackError(f"no local stack is running for {self.loaded.path}; start it with `stack up --local`")
        return state

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        state = self._require()
        url = f"http://127.0.0.1:{state['control_port']}{path}"
        try:
            response = requests.request(method, url, timeout=10, **kwargs)
        except requests.RequestException as exc:
            raise StackError(f"the local supervisor (pid {state['pid']}) does not answer: {exc}") from exc
        body = response.json()
        if response.status_code >= 400:
            raise StackError(body.get("error", response.text))
        return body

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def scale(self, api: str, replicas: int, force: bool = False) -> None:
        self._call("POST", "/scale", json={"api": api, "replicas": replicas, "force": force})

    # -- up / down ----------------------------------------------------------------------

    def up(self, progress: Callable[[str], None]) -> dict[str, Any]:
        if self.state() is not None:
            progress("a local stack is running: updating it")
            self._call("POST", "/reload")
        else:
            self._start(progress)
        return self.wait_ready(progress)

    def _start(self, progress: Callable[[str], None]) -> None:
        port = self.loaded.spec.gateway.port
        if not port_is_free("0.0.0.0", port):
            raise StackError(
                f"gateway port {port} is already in use; stop what uses it (`ss -ltnp 'sport = :{port}'`) "
                "or set gateway.port in stack.yaml"
            )
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.paths.logs / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.local.supervisor", str(self.loaded.root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        progress(f"started the supervisor (pid {proc.pid}); logs in {self.paths.logs}")
        deadline = time.monotonic() + 30
        while self.state() is None:
            if proc.poll() is not None:
                raise StackError(f"the supervisor exited at start:\n{_tail(self.paths.logs / 'supervisor.log')}")
            if time.monotonic() > deadline:
                raise StackError("the supervisor did not start within 30s; see .stack/logs/supervisor.log")
            time.sleep(0.1)

    def wait_ready(self, progress: Callable[[str], None], timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            status = self.status()
            line = ", ".join(f"{a['name']} {a['ready']}/{a['desired']} {a['status']}" for a in status["apis"])
            if line != last:
                progress(line)
                last = line
            failed = [a for a in status["apis"] if a["status"] == "error"]
            if failed:
                api = failed[0]
                logs = _tail(self.paths.logs / f"{api['name']}-{_last_replica(api)}.log")
                raise StackError(f"API {api['name']} cannot start: {api['error']}\nlast log lines:\n{logs}")
            if all(a["status"] == "live" for a in status["apis"]):
                return status
            if time.monotonic() > deadline:
                raise StackError(f"replicas not ready after {timeout:.0f}s: {line}")
            time.sleep(0.2)

    def down(self, timeout: float = 120) -> bool:
        state = self.state()
        if state is None:
            return False
        try:
            self._call("POST", "/shutdown")
        except StackError:
            os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(state["pid"]):
            if time.monotonic() > deadline:
                os.kill(state["pid"], signal.SIGKILL)
                break
            time.sleep(0.1)
        return True

    # -- logs ---------------------------------------------------------------------------

    def log_files(self, api: str) -> list[Path]:
        return sorted(self.paths.logs.glob(f"{api}-*.log"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))

    def follow(self, api: str, follow: bool) -> Iterator[str]:
        offsets: dict[Path, int] = {}
        while True:
            for path in self.log_files(api):
                with open(path, errors="replace") as handle:
                    handle.seek(offsets.get(path, 0))
                    for line in handle:
                        yield f"{path.stem} | {line.rstrip()}"
                    offsets[path] = handle.tell()
            if not follow:
                return
            time.sleep(0.3)


def _last_replica(api: dict[str, Any]) -> str:
    events = [e for e in api.get("events", []) if "started replica" in e]
    return events[-1].split("started replica ", 1)[1].split()[0].rsplit("-", 1)[1] if events else "1"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
