"""The local target on a bad day: corrupt state, a killed supervisor, a truncated routes file,
two commands at once; and who may talk to it (its control socket, the gateway's address)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import requests
from cli import STACK, stack
from local_stack import listening, status
from waits import until

from stack.atomic import ProjectLock
from stack.targets.local.state import LocalPaths, pid_alive


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, the kernel picks the route
            address: str = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_corrupt_state_truncated_routes_and_who_may_connect(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", "--local", str(root), cwd=root)
    paths = LocalPaths(root)
    state = json.loads(paths.state_file.read_text())
    supervisor = state["pid"]

    # The control API is a unix socket only this user may open; the TCP port Prometheus scrapes takes no orders.
    sock = Path(state["control_socket"])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    metrics_port = state["metrics_port"]
    assert requests.post(f"http://127.0.0.1:{metrics_port}/shutdown", timeout=5).status_code in (404, 405)
    assert requests.post(f"http://127.0.0.1:{metrics_port}/scale", json={}, timeout=5).status_code in (404, 405)
    assert pid_alive(supervisor)
    # The local gateway listens on 127.0.0.1 only.
    other = _other_address()
    if other is not None:
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((other, port)) != 0

    # What the gateway answers itself is JSON too: a path no API serves, a replica's internal path.
    for path in ("/nothing", "/echo/metrics"):
        missing = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"] == "no API is served at this path"

    # A truncated routes file: the supervisor notices and writes it again; requests keep working.
    routes_file = paths.traefik_dir / "routes.yml"
    routes_file.write_text(routes_file.read_text()[:40])
    until(lambda: "servers" in routes_file.read_text(), "'servers' in routes_file.read_text()")
    until(
        lambda: requests.post(url, json={}, timeout=5).status_code == 200,
        "requests.post(url, json={}, timeout=5).status_code == 200",
    )
    assert status(root)["apis"][0]["status"] == "live"

    # A truncated state file and pid file: the supervisor writes them again within a second; status works.
    paths.state_file.write_text(paths.state_file.read_text()[:25])
    paths.pid_file.write_text("12")
    shown = stack("status", "--local", "-p", str(root), cwd=root)
    assert "live" in shown.stdout and "Traceback" not in shown.stderr
    until(
        lambda: paths.pid_file.read_text().strip() == str(supervisor),
        "paths.pid_file.read_text().strip() == str(supervisor)",
    )
    assert json.loads(paths.state_file.read_text())["pid"] == supervisor
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"
    until(
        lambda: not pid_alive(supervisor) and not listening(port), "not pid_alive(supervisor) and not listening(port)"
    )

    # A state file of the wrong shape, nothing running: a clear message, not an AttributeError.
    paths.state_file.parent.mkdir(parents=True, exist_ok=True)
    paths.state_file.write_text('["not", "a", "state"]')
    wrong = stack("status", "--local", "-p", str(root), cwd=root, check=False)
    assert wrong.returncode != 0 and "unreadable" in wrong.stderr and "no supervisor" in wrong.stderr
    assert "AttributeError" not in wrong.stderr


def test_a_killed_supervisor_is_reported_then_restarted(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", "--local", str(root), cwd=root)
    supervisor = status(root)["pid"]
    os.kill(supervisor, signal.SIGKILL)
    until(
        lambda: not pid_alive(supervisor) and not listening(port), "not pid_alive(supervisor) and not listening(port)"
    )
    shown = stack("status", "--local", "-p", str(root), cwd=root, check=False)
    assert shown.returncode != 0
    assert f"died: its supervisor (pid {supervisor}) is gone since 20" in shown.stderr, shown.stderr
    again = stack("up", "--local", str(root), cwd=root)
    assert "starting it afresh" in again.stderr
    assert requests.post(url, json={}, timeout=5).status_code == 200


def test_two_commands_at_once_the_second_names_the_first(project: tuple[Path, int]) -> None:
    root, _port = project
    with ProjectLock(root, "stack up (local)"):
        for args in (["up", "--local", str(root)], ["down", "--local", str(root)]):
            second = subprocess.run([*STACK, *args], cwd=root, capture_output=True, text=True, timeout=60)
            assert second.returncode != 0
            assert f"`stack up (local)` (pid {os.getpid()}, since 20" in second.stderr, second.stderr
            assert "is changing this project" in second.stderr
    # Released: the next command runs (nothing was started, so there is nothing to stop).
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "nothing was running"


def test_api_keys_reach_replicas_as_a_private_file(project: tuple[Path, int], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, port = project
    spec = root / "stack.yaml"
    keyed = f'gateway: {{port: {port}, api_keys: "${{LOCAL_KEYS}}"}}'
    spec.write_text(spec.read_text().replace(f"gateway: {{port: {port}}}", keyed))
    monkeypatch.setenv("LOCAL_KEYS", "local-secret-key-1")
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/echo"
    assert requests.post(url, json={}, timeout=5).status_code == 401
    assert requests.post(url, json={}, headers={"X-API-Key": "local-secret-key-1"}, timeout=5).status_code == 200
    keys_file = LocalPaths(root).api_keys
    assert keys_file.read_text() == "local-secret-key-1\n" and stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    for replica in status(root)["apis"][0]["replicas"]:
        environ = Path(f"/proc/{replica['pid']}/environ").read_bytes()
        assert b"local-secret-key-1" not in environ  # not in the replica's environment (its config names the file)
    # A shell without the keys' variable can still see and stop the stack (only `up` needs the keys).
    monkeypatch.delenv("LOCAL_KEYS")
    assert status(root)["apis"][0]["status"] == "live"
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"


def test_a_copy_with_the_same_project_name_is_refused_and_takes_nothing_over(
    project: tuple[Path, int], tmp_path: Path
) -> None:
    """One stack per project name: a copy of a running project (only its port changed) is refused, naming
    the directory that runs it; its `down` touches nothing of it; once that one is down, the copy starts."""
    import shutil

    from common import free_port

    root, port = project
    stack("up", "--local", str(root), cwd=root)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".stack"))
    copy_port = free_port()
    (copy / "stack.yaml").write_text((root / "stack.yaml").read_text().replace(f"port: {port}", f"port: {copy_port}"))
    refused = stack("up", "--local", str(copy), cwd=copy, check=False)
    assert refused.returncode == 1
    name = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)["project"]
    assert f"project {name} already runs on this machine from {root.resolve()}" in refused.stderr, refused.stderr
    assert f"`stack down --local {root.resolve()}`" in refused.stderr and "Traceback" not in refused.stderr
    assert not listening(copy_port)
    # `down` from the copy stops nothing of the running one.
    stack("down", "--local", str(copy), cwd=copy, check=False)
    assert requests.post(f"http://127.0.0.1:{port}/echo", json={}, timeout=5).status_code == 200
    # The name is free once its stack is down: the copy starts.
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"
    try:
        stack("up", "--local", str(copy), cwd=copy)
        assert requests.post(f"http://127.0.0.1:{copy_port}/echo", json={}, timeout=5).status_code == 200
    finally:
        stack("down", "--local", str(copy), cwd=copy, check=False)


def test_a_command_without_the_target_flag_names_the_target_that_runs_the_stack(project: tuple[Path, int]) -> None:
    """A --local stack runs; the same commands without --local (Compose by default) say where the stack is
    and the flag to add, rather than `stopped 0/0`, "no containers" or "port in use"; nothing is touched."""
    root, port = project
    stack("up", "--local", str(root), cwd=root)
    for command in (["status"], ["logs", "echo"], ["scale", "echo", "3"], ["up"], ["down"]):
        said = stack(*command, "-p", str(root), cwd=root, check=False)
        assert said.returncode == 1, (command, said.stdout)
        assert "but a local one does (started with `stack up --local`): add --local" in said.stderr, said.stderr
        assert f"`stack {command[0]} --local`" in said.stderr and "Traceback" not in said.stderr
    assert requests.post(f"http://127.0.0.1:{port}/echo", json={}, timeout=5).status_code == 200
    assert status(root)["apis"][0]["ready"] == 2


def test_down_stops_a_supervisor_caught_before_it_wrote_its_pid_file(project: tuple[Path, int]) -> None:
    """Ctrl-C on `stack up` at the moment it started the supervisor: no pid file, no state yet. `stack down`
    still finds it (by its command line) and stops it with what it had started (its process group)."""
    root, _ = project
    paths = LocalPaths(root)
    # A stand-in caught at that moment: the supervisor's command line, a child of its own, no files yet.
    child = "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])"
    script = f"import subprocess, sys, time; {child}; time.sleep(300)"
    starting = subprocess.Popen(
        [sys.executable, "-c", script, "-m", "stack.targets.local.supervisor", str(paths.spec_file)],
        start_new_session=True,
    )
    try:
        until(lambda: len(_group(starting.pid)) == 2, "the stand-in and its child to run")
        assert not paths.pid_file.exists()
        assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"
        until(lambda: not _group(starting.pid), "the stand-in's whole group to be gone")
    finally:
        if starting.poll() is None:
            starting.kill()
        starting.wait(10)


def _group(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid and pid_alive(int(name)):
                    found.append(int(name))
            except OSError:
                continue
    return found


def test_tracing_without_opentelemetry_is_one_error_before_anything_starts(project: tuple[Path, int]) -> None:
    """The replicas run in this Python: tracing on without OpenTelemetry here is one error naming the extra,
    not a crash loop with a traceback in every replica. (OpenTelemetry is hidden from this one command.)"""
    root, port = project
    spec = root / "stack.yaml"
    spec.write_text(spec.read_text() + "tracing: {endpoint: http://127.0.0.1:4318}\n")
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from stack.cli import cli\n"
        "cli(['up', '--local', sys.argv[1]], prog_name='stack')\n"
    )
    said = subprocess.run([sys.executable, "-c", hide, str(root)], capture_output=True, text=True, cwd=root)
    assert said.returncode == 1, said.stdout
    assert "lacks what stack.yaml asks for: opentelemetry-sdk (for tracing)" in said.stderr, said.stderr
    assert "pip install 'stack-serve[tracing]'" in said.stderr and "Traceback" not in said.stderr
    assert not LocalPaths(root).pid_file.exists() and not listening(port)
