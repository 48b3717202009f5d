"""The local supervisor as a process, from the CLI's side: started detached (its own session, its log),
waited for until it writes its state, and stopped (SIGTERM: it drains and stops every child; SIGKILL after a
timeout, with its process group where it may not have got as far as its signal handlers).

What the supervisor does once running is stack.targets.local.supervisor; how the CLI talks to it is
stack.targets.local.control.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from serving.supervisor import port_is_free
from stack.errors import StackError
from stack.spec import LoadedSpec
from stack.targets.local.state import LocalPaths, pid_alive

START_TIMEOUT = 30.0  # seconds for a new supervisor to write its state (it loads no model itself)

# Started by this process (several, in a test run), with the spec file each runs.
_SUPERVISORS: list[tuple[Path, subprocess.Popen[bytes]]] = []


@atexit.register
def _reap() -> None:
    """Collect the supervisors this process started that have exited since (a `stack down` in the same process)."""
    for _spec, proc in _SUPERVISORS:
        proc.poll()


def start_supervisor(
    loaded: LoadedSpec, paths: LocalPaths, progress: Callable[[str], None], started: Callable[[], bool]
) -> int:
    """Start the supervisor of `loaded` in the background; return its pid once `started()` says it wrote its
    state. The last run's logs move to logs/previous/ first: what a failure shows is this run's lines only."""
    port = loaded.spec.gateway.port
    if not port_is_free("0.0.0.0", port):
        raise StackError(
            f"gateway port {port} is already in use; stop what uses it (`ss -ltnp 'sport = :{port}'`) "
            "or set gateway.port in stack.yaml"
        )
    paths.logs.mkdir(parents=True, exist_ok=True)
    keep_as_previous(paths.logs)
    log = open(paths.logs / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack.targets.local.supervisor", str(loaded.path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    _SUPERVISORS.append((loaded.path, proc))  # it outlives this command: Python must not warn that it is still running
    progress(f"started the supervisor (pid {proc.pid}); logs in {paths.logs}")
    deadline = time.monotonic() + START_TIMEOUT
    while not started():
        if proc.poll() is not None:
            raise StackError(f"the supervisor exited at start:\n{tail(paths.logs / 'supervisor.log')}")
        if time.monotonic() > deadline:
            raise StackError(
                f"the supervisor did not start within {START_TIMEOUT:.0f}s; see {paths.logs / 'supervisor.log'}"
            )
        time.sleep(0.1)
    return proc.pid


def started_here(spec_file: Path) -> int | None:
    """The pid of a supervisor of `spec_file` this process started and that still runs (what an interrupted
    `stack up` names even before the new process shows its command line to others)."""
    for spec, proc in reversed(_SUPERVISORS):
        if spec.resolve() == spec_file.resolve() and proc.poll() is None:
            return proc.pid
    return None


def stop_supervisor(pid: int, timeout: float, signalled: bool = False, group: bool = False) -> None:
    """SIGTERM (the supervisor drains and stops every child), SIGKILL after `timeout`. `group`: then its
    process group too (the supervisor leads its own session): what a supervisor that never got as far as
    its signal handlers had started (its gateway) goes with it."""
    if not signalled:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def keep_as_previous(logs: Path) -> None:
    """A new supervisor numbers its replicas from 1 again: the last run's logs (replicas, supervisor, gateway)
    move to logs/previous/ (replacing the run before), so this run's files hold this run's lines only."""
    previous = logs / "previous"
    files = [f for f in logs.iterdir() if f.is_file() and (f.suffix == ".log" or f.name.endswith(".error.json"))]
    if not files:
        return
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for file in files:
        with contextlib.suppress(OSError):
            file.rename(previous / file.name)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
