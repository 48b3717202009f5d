"""Where the local target keeps its state: `.stack/` beside stack.yaml.

The supervisor writes `.stack/local/state.json` (its pid and control socket),
a pid file and a heartbeat; any shell of its user can find the running stack,
ask it for status, or stop it. None of these files is trusted alone: the pid
must be a live supervisor *of this spec file* (its command line names it: a
recycled pid, or another project's supervisor, is never taken for it). With its
state file lost or corrupt, the supervisor is found through its pid file, else
among the user's processes, and it rewrites both files within a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.control.canary import STATE_FILE as CANARY_FILE
from stack.errors import NotRunning, StackError

SUPERVISOR_MODULE = "stack.targets.local.supervisor"


@dataclass(frozen=True)
class LocalPaths:
    root: Path  # the directory of stack.yaml
    spec_name: str = "stack.yaml"  # another spec file of the same directory is another stack

    @property
    def base(self) -> Path:
        if self.spec_name == "stack.yaml":
            return self.root / ".stack"
        return self.root / ".stack" / f"spec-{Path(self.spec_name).stem}"

    @property
    def spec_file(self) -> Path:
        """The spec file the supervisor was started with (its command line names it)."""
        return (self.root / self.spec_name).resolve()

    @property
    def state_file(self) -> Path:
        return self.base / "local" / "state.json"

    @property
    def pid_file(self) -> Path:
        return self.base / "local" / "supervisor.pid"

    @property
    def heartbeat(self) -> Path:
        """Touched by the supervisor every second: when a dead stack was last alive."""
        return self.base / "local" / "heartbeat"

    @property
    def control_socket(self) -> Path:
        """Short, private and per stack: a unix socket path may hold at most 107 bytes."""
        digest = hashlib.sha256(str(self.state_file.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"stack-{os.getuid()}" / f"{digest}.sock"

    @property
    def split_overrides(self) -> Path:
        """Where `stack split` keeps weights until the next `stack up` (splits.json)."""
        return self.base / "local"

    @property
    def placement(self) -> Path:
        """Where `stack up --local` placed the GPU APIs' replica slots (stack.plan.gpus)."""
        return self.base / "local" / "placement.json"

    @property
    def acme_storage(self) -> Path:
        """Traefik's ACME account and certificates (0600), kept across `stack up` and lost state."""
        return self.base / "acme" / "acme.json"

    @property
    def api_keys(self) -> Path:
        """The replicas read the API keys here (0600), not from their environment."""
        return self.base / "local" / "api_keys"

    @property
    def traefik_dir(self) -> Path:
        return self.base / "local" / "traefik"

    @property
    def upstreams(self) -> Path:
        """Pipelines: the directory of the file that tells replicas where the APIs they call are."""
        return self.base / "local" / "upstreams"

    @property
    def prometheus_dir(self) -> Path:
        return self.base / "local" / "prometheus"

    @property
    def jobs(self) -> Path:
        """BatchAPI jobs and their batches (stack.control.batch.store): kept across restarts and `stack down`."""
        return self.base / "jobs.db"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def replica_log(self, replica_id: str) -> Path:
        return self.logs / f"{replica_id}.log"


@dataclass(frozen=True)
class LocalState:
    """What the supervisor says about itself in state.json."""

    pid: int
    control_socket: str  # the control API: a unix socket only its owner may open
    gateway_port: int
    prometheus_url: str | None
    notes: list[str]
    check_port: int = 0  # where the stack's own checks reach the routes (the gateway's port without TLS)
    control_port: int = 0  # the controller's HTTP endpoint on 127.0.0.1: /metrics, /dashboard/


class StateUnreadable(StackError):
    """state.json is there but cannot be read; `supervisor_pid` is the live supervisor found without it."""

    def __init__(self, message: str, supervisor_pid: int | None) -> None:
        super().__init__(message)
        self.supervisor_pid = supervisor_pid


class StackDied(NotRunning):
    """The stack was running and its supervisor is gone (killed, the machine rebooted)."""


def _parse(data: Any) -> LocalState:
    if not isinstance(data, dict):
        raise ValueError(f"a {type(data).__name__}, not an object")
    pid, sock, port = data.get("pid"), data.get("control_socket"), data.get("gateway_port")
    if type(pid) is not int or not isinstance(sock, str) or type(port) is not int:
        raise ValueError("pid, control_socket or gateway_port is missing or of the wrong type")
    prometheus = data.get("prometheus_url")
    notes = data.get("notes") or []
    check, control_port = data.get("check_port"), data.get("metrics_port")
    return LocalState(
        pid,
        sock,
        port,
        prometheus if isinstance(prometheus, str) else None,
        [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else [],
        check if type(check) is int else port,
        control_port if type(control_port) is int else 0,
    )


REPAIR_WAIT = 3.0  # seconds to wait for a running supervisor to rewrite a lost or corrupt state file


def read_state(paths: LocalPaths, repair_wait: float = REPAIR_WAIT) -> LocalState | None:
    """The running stack's state; None when none runs. Never trusts the file alone.

    A state file whose supervisor is gone (or whose pid is now another process, another
    project's supervisor included) raises StackDied, with when it was last alive, unless this
    stack's supervisor runs under another pid; a lost or unreadable one is given `repair_wait`
    seconds to be rewritten by this stack's supervisor (found through its pid file or its command
    line), then raises StateUnreadable naming it.
    """
    deadline = time.monotonic() + repair_wait
    while True:
        try:
            return _read_state(paths)
        except StateUnreadable as unreadable:
            if unreadable.supervisor_pid is None or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def _read_state(paths: LocalPaths) -> LocalState | None:
    try:
        text = paths.state_file.read_text()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        text = f"\0unreadable: {exc}"
    if text is None:
        live = supervisor_pid(paths)
        if live is not None:
            raise StateUnreadable(
                f"{paths.state_file} is missing but the stack's supervisor (pid {live}) is running", live
            )
        return None
    try:
        state = _parse(json.loads(text))
    except ValueError as exc:
        live = supervisor_pid(paths)
        running = (
            f"its supervisor (pid {live}) is still running; `stack down --local` stops it"
            if live is not None
            else "no supervisor of this stack is running"
        )
        message = f"the local stack's state file {paths.state_file} is unreadable ({exc}); {running}"
        raise StateUnreadable(message, live) from None
    if not is_supervisor(state.pid, paths.spec_file):
        live = supervisor_pid(paths)
        if live is not None:
            raise StateUnreadable(
                f"{paths.state_file} names pid {state.pid}, which is not this stack's supervisor; that is pid {live}",
                live,
            )
        gone = "is gone" if not pid_alive(state.pid) else "is gone (that pid is another process now)"
        raise StackDied(
            f"the local stack died: its supervisor (pid {state.pid}) {gone}{last_alive(paths)} and every "
            "replica, Traefik and Prometheus with it; `stack up --local` starts it again"
        )
    return state


def supervisor_pid(paths: LocalPaths) -> int | None:
    """This stack's live supervisor: the pid file's, else the one whose command line names its spec file."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and is_supervisor(pid, paths.spec_file):
        return pid
    return find_supervisor(paths.spec_file)


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def is_supervisor(pid: int, spec_file: Path) -> bool:
    """pid is alive and is the supervisor of `spec_file` (not a recycled pid, not another stack's)."""
    if not pid_alive(pid):
        return False
    cmdline = _cmdline(pid)
    if cmdline is None:
        return not Path("/proc/self").exists()  # no /proc at all: trust the pid
    return _runs(cmdline, spec_file)


def _runs(cmdline: list[bytes], spec_file: Path) -> bool:
    if SUPERVISOR_MODULE.encode() not in cmdline:
        return False
    after = cmdline[cmdline.index(SUPERVISOR_MODULE.encode()) + 1 :]
    return bool(after) and os.fsencode(spec_file) == after[0]


def find_supervisor(spec_file: Path) -> int | None:
    """This user's running supervisor of `spec_file`, found by its command line (state files lost)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        cmdline = _cmdline(int(name))
        if cmdline and _runs(cmdline, spec_file) and pid_alive(int(name)):
            return int(name)
    return None


def last_alive(paths: LocalPaths) -> str:
    try:
        at = paths.heartbeat.stat().st_mtime
    except OSError:
        return ""
    return f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}"


def forget(paths: LocalPaths) -> None:
    """Remove what a dead stack left behind, so the next `up` starts clean."""
    # A stack brought up again is a new deployment: its canaries start over.
    canaries = paths.split_overrides / CANARY_FILE
    for path in (paths.state_file, paths.pid_file, paths.heartbeat, canaries):
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
