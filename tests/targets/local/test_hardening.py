"""The local target on a worse day: its gateway and Prometheus killed, its state lost or naming another
stack's supervisor, replicas that fail to start a few times, a replica over its memory, and clients
that declare huge bodies or stall theirs through the gateway."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from cli import stack
from common import EXAMPLES, PREDICTORS, free_port
from local_stack import listening, status, write_spec
from waits import holds, until

from stack.targets.local.children import WatchedDirectories
from stack.targets.local.state import LocalPaths, pid_alive


def _diagnosis(root: Path) -> str:
    """What a failed wait shows: the stack's status and the tails of its logs."""
    said = [stack("status", "--local", "--json", "-p", str(root), cwd=root, check=False).stdout]
    for log in sorted((root / ".stack/logs").glob("*.log")):
        said.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
    return "\n".join(said)


def _component(root: Path, name: str) -> dict:
    return next(c for c in status(root)["components"] if c["name"] == name)


def _pid(component: dict) -> int:
    return int(component["detail"].rsplit("pid ", 1)[1])


def _answers(url: str) -> bool:
    return requests.post(url, json={}, timeout=5).status_code == 200


def test_a_killed_gateway_and_prometheus_come_back(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", "--local", str(root), cwd=root)
    gateway = _component(root, "gateway")
    assert gateway["running"] and gateway["restarts"] == 0
    os.kill(_pid(gateway), signal.SIGKILL)
    # Started again by the supervisor (once a second), on the same port, with the same routes.
    until(
        holds(lambda: _component(root, "gateway")["restarts"] == 1), "_component(root, 'gateway')['restarts'] == 1", 15
    )
    until(holds(lambda: _answers(url)), "_answers(url)", 15)
    assert _component(root, "gateway")["running"]

    if shutil.which("prometheus") is not None:
        prometheus = _component(root, "prometheus")
        os.kill(_pid(prometheus), signal.SIGKILL)
        until(
            holds(lambda: _component(root, "prometheus")["restarts"] == 1),
            "_component(root, 'prometheus')['restarts'] == 1",
            15,
        )
        url_of = status(root)
        assert url_of["apis"][0]["status"] == "live"


def test_lost_state_is_repaired_and_down_finds_the_supervisor(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", "--local", str(root), cwd=root)
    paths = LocalPaths(root)
    supervisor = status(root)["pid"]
    # Everything under .stack/local goes: state, pid file, routes directory (Traefik's watcher with it).
    shutil.rmtree(paths.state_file.parent)
    until(
        holds(lambda: json.loads(paths.state_file.read_text())["pid"] == supervisor),
        "json.loads(paths.state_file.read_text())['pid'] == supervisor",
        15,
    )
    until(holds(lambda: _answers(url)), "_answers(url)", 15)
    # The routes directory is watched again: a scale change still reaches the gateway.
    stack("scale", "echo", "3", "--force", "--local", "-p", str(root), cwd=root)
    until(holds(lambda: status(root)["apis"][0]["ready"] == 3), "status(root)['apis'][0]['ready'] == 3", 30)
    # The state file gone again, and `up` right after: it finds the running stack, no "port in use".
    paths.state_file.unlink()
    again = stack("up", "--local", str(root), cwd=root)
    assert "updating it" in again.stderr
    paths.state_file.unlink()
    paths.pid_file.unlink()
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"
    until(
        holds(lambda: not pid_alive(supervisor) and not listening(port)),
        "not pid_alive(supervisor) and not listening(port)",
    )


def test_a_state_file_naming_another_stacks_supervisor(project: tuple[Path, int], tmp_path: Path) -> None:
    root, port = project
    other = tmp_path / "other"
    shutil.copytree(EXAMPLES / "echo", other, ignore=shutil.ignore_patterns(".stack"))
    other_port = free_port()
    write_spec(other, other_port, greeting="other", min_replicas=1)
    try:
        stack("up", "--local", str(other), cwd=other)
        stack("up", "--local", str(root), cwd=root)
        mine, theirs = status(root)["pid"], status(other)["pid"]
        paths = LocalPaths(root)
        # As after a reboot that gave this stack's old pid to the other stack's supervisor:
        state = json.loads(paths.state_file.read_text())
        paths.state_file.write_text(json.dumps({**state, "pid": theirs}))
        paths.pid_file.write_text(f"{theirs}\n")
        assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"
        until(holds(lambda: not pid_alive(mine) and not listening(port)), "not pid_alive(mine) and not listening(port)")
        assert pid_alive(theirs)
        assert requests.post(f"http://127.0.0.1:{other_port}/echo", json={}, timeout=5).json()["greeting"] == "other"
        # Nothing of this stack runs and its state names the other supervisor: it is left alone.
        paths.state_file.parent.mkdir(parents=True, exist_ok=True)
        paths.state_file.write_text(json.dumps({**state, "pid": theirs}))
        shown = stack("status", "--local", "-p", str(root), cwd=root, check=False)
        assert shown.returncode != 0 and "another process" in shown.stderr
        assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "nothing was running"
        assert pid_alive(theirs) and _answers(f"http://127.0.0.1:{other_port}/echo")
    finally:
        stack("down", "--local", str(other), cwd=other, check=False)


def _predictor_spec(root: Path, port: int, predictor: str, config: str, extra: str = "", replicas: int = 2) -> None:
    shutil.copy(PREDICTORS / predictor, root / predictor)
    (root / "stack.yaml").write_text(
        f"project: hardening\n"
        f"gateway: {{port: {port}}}\n"
        f"apis:\n"
        f"  - name: echo\n"
        f"    predictor: {{path: {predictor}, config: {config}{extra}}}\n"
        f"    autoscaling: {{min_replicas: {replicas}, max_replicas: {replicas}}}\n"
    )


def test_up_waits_out_start_up_retries_per_slot(project: tuple[Path, int], tmp_path: Path) -> None:
    root, port = project
    starts = tmp_path / "starts"
    # Each of the two slots' first replica fails (two failures in all): `up` waits for the retries.
    _predictor_spec(root, port, "flaky_init.py", f"{{starts_dir: {starts}, fail_times: 2}}")
    stack("up", "--local", str(root), cwd=root)
    shown = status(root)["apis"][0]
    assert shown["status"] == "live" and shown["ready"] == 2 and not shown["error"]
    failed = [e for e in shown["events"] if "failed to start" in e]
    assert len(failed) == 2 and all("1 in a row in its slot" in e and "retry in 1s, at " in e for e in failed)
    assert requests.post(f"http://127.0.0.1:{port}/echo", json={}, timeout=5).json() == {"ok": True}


def test_up_fails_when_a_slot_keeps_failing_and_the_retries_go_on(project: tuple[Path, int]) -> None:
    root, port = project
    _predictor_spec(root, port, "init_fails.py", "{}", replicas=1)
    failed = stack("up", "--local", str(root), cwd=root, check=False)
    assert failed.returncode != 0
    assert "weights file corrupt" in failed.stderr and "failed to start 3 times in a row" in failed.stderr
    assert "keeps retrying" in failed.stderr
    shown = status(root)["apis"][0]
    assert shown["status"] == "error" and "weights file corrupt" in shown["error"]
    # The supervisor goes on at the back-off's pace (1, 2, 4 s...): a fourth try comes.
    until(
        holds(lambda: sum("failed to start" in e for e in status(root)["apis"][0]["events"]) >= 4),
        "sum('failed to start' in e for e in status(root)['apis'][0]['events']) >= 4",
        30,
    )
    assert any("retry in 8s, at " in e for e in status(root)["apis"][0]["events"])
    # Down, fixed differently (it now fails for another reason), up again: the failure shows this run's lines
    # only, never the last run's traceback; the last run's logs are kept in logs/previous/.
    stack("down", "--local", str(root), cwd=root)
    (root / "init_fails.py").write_text(
        (root / "init_fails.py").read_text().replace("weights file corrupt", "tokenizer missing")
    )
    again = stack("up", "--local", str(root), cwd=root, check=False)
    assert again.returncode != 0 and "tokenizer missing" in again.stderr
    assert "weights file corrupt" not in again.stderr, again.stderr
    assert "weights file corrupt" in (root / ".stack/logs/previous/echo-1.log").read_text()


def test_a_replica_over_its_memory_is_killed_and_replaced(project: tuple[Path, int]) -> None:
    root, port = project
    _predictor_spec(root, port, "leaky.py", "{leak_mb: 60}", replicas=1)
    spec = root / "stack.yaml"
    spec.write_text(spec.read_text() + "    compute: {mem: 250Mi}\n")
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/echo"
    first = status(root)["apis"][0]["replicas"][0]["pid"]
    for _ in range(12):  # bounded: 60 MB a request passes 250 MiB within five
        with contextlib.suppress(requests.RequestException):
            requests.post(url, json={}, timeout=10)
        if not pid_alive(first):
            break
        time.sleep(0.6)  # the watchdog reads memory twice a second
    until(holds(lambda: not pid_alive(first)), "not pid_alive(first)", 10)
    until(holds(lambda: status(root)["apis"][0]["status"] == "live"), "status(root)['apis'][0]['status'] == 'live'", 60)
    shown = status(root)["apis"][0]
    assert shown["restarts"] >= 1
    assert shown["error"] == "killed: out of memory (limit 250Mi)"
    assert any("killed: out of memory (limit 250Mi, resident " in e and "replacing it" in e for e in shown["events"])
    assert _answers(url)


def _raw(port: int, data: bytes, wait: float = 20.0) -> tuple[int, dict]:
    """Send `data` and nothing more; the gateway's answer (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body[body.index(b"{") :])


def test_the_gateway_keeps_the_replicas_body_limits(project: tuple[Path, int]) -> None:
    root, port = project
    spec = root / "stack.yaml"
    limits = "      max_body_size: 1Ki\n      body_timeout: {t}\n"
    base = spec.read_text()
    anchor = "      config: {greeting: echo}\n"
    spec.write_text(base.replace(anchor, anchor + limits.format(t=90)))
    stack("up", "--local", str(root), cwd=root)
    # A declared 2 GB body: refused at once in the replica's words (not when the gateway's read times out,
    # 91 s here), the body never read.
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    declared = head + b"Content-Length: 2000000000\r\n\r\n{"
    code, body = _raw(port, declared)
    assert code == 413 and body["error"] == "request body exceeds max_body_size of 1024 bytes"
    # Within the limit, and a chunked body over it (the replica counts it as it comes).
    assert requests.post(f"http://127.0.0.1:{port}/echo", json={"a": 1}, timeout=5).status_code == 200
    chunks = iter([b'{"a": "' + b"x" * 2000 + b'"}'])
    over = requests.post(f"http://127.0.0.1:{port}/echo", data=chunks, timeout=10)
    assert over.status_code == 413 and "max_body_size of 1024 bytes" in over.json()["error"]

    # A stalled body: the replica's 408 at its body_timeout, through the gateway too.
    spec.write_text(base.replace(anchor, anchor + limits.format(t=2)))
    stack("up", "--local", str(root), cwd=root)
    # The gateway's read timeout follows (a second past the longest body_timeout): Traefik restarted with it.
    until(
        holds(lambda: _component(root, "gateway")["restarts"] == 1), "_component(root, 'gateway')['restarts'] == 1", 15
    )
    until(holds(lambda: _answers(f"http://127.0.0.1:{port}/echo")), "_answers(f'http://127.0.0.1:{port}/echo')", 15)
    stalled = head + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    code, body = _raw(port, stalled)
    assert code == 408 and "did not arrive within 2s" in body["error"]


def test_ctrl_c_during_up_says_what_runs_on_and_how_to_stop_it(project: tuple[Path, int], tmp_path: Path) -> None:
    root, port = project
    release = tmp_path / "release"
    _predictor_spec(root, port, "held_init.py", f"{{release_file: {release}}}", replicas=1)
    command = [sys.executable, "-m", "stack", "up", "--local", str(root)]
    # At once, while Python imports the CLI (or before): never a traceback.
    # (A signal inside the interpreter's own start, before any of our code, is Python's to report:
    # "init_import_site". Then the same a little later.)
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3):
        early = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(delay)
            early.send_signal(signal.SIGINT)
            _, said = early.communicate(timeout=60)  # a loaded machine: Python's start alone can take seconds
        finally:
            if early.poll() is None:  # never left behind, whatever failed
                early.kill()
                early.communicate()
        if "init_import_site" not in said:
            break
    assert "Traceback" not in said, said
    # `down` finds a supervisor interrupted before it wrote its pid file too (by its command line), and
    # stops what it had started: the port is free again.
    stack("down", "--local", str(root), cwd=root, check=False)
    until(holds(lambda: not listening(port)), "the gateway port to be free after `stack down`", 60)

    # Once the supervisor started: one line naming it and how to stop it, exit 130.
    up = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True)
    assert up.stderr is not None
    lines = []
    for line in up.stderr:  # bounded: `up` ends (at the latest when __init__ gives up after 60 s)
        lines.append(line)
        if "started the supervisor" in line:
            break
    up.send_signal(signal.SIGINT)
    try:
        _, rest = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == 130, "".join(lines) + rest
    assert "Traceback" not in rest and rest.strip().count("\n") == 0, rest
    assert "(pid " in rest, (rest, (root / ".stack/logs/supervisor.log").read_text()[-3000:])
    supervisor = int(rest.split("(pid ")[1].split(")")[0])
    assert rest.startswith("\ninterrupted: the supervisor (pid ") and pid_alive(supervisor)
    assert f"stack down --local {root}" in rest
    # It does go on: released, the API serves, and the named command stops it.
    release.touch()
    until(holds(lambda: status(root)["apis"][0]["status"] == "live"), lambda: _diagnosis(root), 90)
    assert _answers(f"http://127.0.0.1:{port}/echo")
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "stopped"
    assert not pid_alive(supervisor)


def test_a_watched_directory_removed_and_made_again_is_noticed(tmp_path: Path) -> None:
    """`rm -rf .stack/local` while the supervisor writes the routes again at once: the new routes directory
    may be made before the next check. It must never pass for the one Traefik watched (its watcher died
    with it), even where the filesystem would hand the freed inode number straight to the new directory."""
    watched = WatchedDirectories()
    routes = tmp_path / "local" / "traefik"
    watched.watch(routes)
    assert not watched.replaced(routes)
    (routes / "routes.yml").write_text("http: {}\n")  # its content changing is not a new directory
    assert not watched.replaced(routes)
    for _ in range(20):  # made again many times over: an inode reuse would show within these
        shutil.rmtree(routes.parent)
        assert watched.replaced(routes)  # gone
        routes.mkdir(parents=True)
        assert watched.replaced(routes)  # made again: still not the one watched
    watched.watch(routes)  # the gateway started again on the new one
    assert not watched.replaced(routes)
    watched.close()
