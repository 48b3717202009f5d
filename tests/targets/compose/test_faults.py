"""A Compose stack on a bad day, on the real engine: replicas killed or removed behind its back, its
controller killed, two commands at once; and what its network-facing containers may do."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import STACK, stack
from common import EXAMPLES, PREDICTORS, free_port
from docker_stack import DOCKER, containers, prom_port, remove_project, write_spec
from waits import holds, until, until_seen

from loadgen import Load
from stack.atomic import ProjectLock

pytestmark = DOCKER


KEY = "fault-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    name = f"fa{int(time.time() * 1000) % 10**8}"
    port = free_port()
    write_spec(root, name, port, free_port(), "v1")
    # The API key from the environment, as a production stack.yaml would name it.
    spec = (root / "stack.yaml").read_text()
    (root / "stack.yaml").write_text(
        spec.replace(f"gateway: {{port: {port}}}", f'gateway: {{port: {port}, api_keys: "${{FAULT_KEYS}}"}}')
    )
    monkeypatch.setenv("FAULT_KEYS", KEY)
    # Secrets beside stack.yaml, as projects have them: none may reach an image.
    (root / ".env").write_text(f"KEY={KEY}\n")
    (root / "secrets.txt").write_text(KEY + "\n")
    (root / "certs").mkdir()
    (root / "certs" / "gateway.key").write_text(KEY + "\n")
    # Links: one to a model file of the project goes in as that file; one giving a secret a harmless name
    # stays out with the secret.
    (root / "models").mkdir()
    (root / "models" / "real.bin").write_bytes(b"weights-0123")
    (root / "weights.bin").symlink_to("models/real.bin")
    (root / "notes.txt").symlink_to(".env")
    yield root, name, port
    remove_project(root, name)


def api_status(root: Path) -> dict:
    return json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)


def wait_ready(root: Path, count: int, gone: set[str], timeout: float = 60) -> dict:
    """The API's status once `count` replicas are ready and none of `gone` is among them."""

    def back(api: dict) -> bool:
        names = {r["id"] for r in api["replicas"] if r["state"] == "ready"}
        return bool(api["ready"] == count and not (names & gone))

    return until_seen(lambda: api_status(root)["apis"][0], back, f"{count} ready replicas again", timeout, 0.5)


def _answers(url: str) -> bool:
    try:
        return requests.post(url, json={}, headers=AUTH, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def role(name: str, which: str) -> dict:
    return next(c for c in containers(name) if c["Config"]["Labels"].get("stack.role") == which)


def test_killed_replicas_come_back_and_only_the_controller_holds_the_socket(
    project: tuple[Path, str, int],
) -> None:
    root, name, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", str(root), cwd=root)

    # The socket: only the controller (no published port) mounts it; Prometheus does not run as root.
    def mounts(c: dict) -> list[str]:
        return [m["Source"] for m in c["Mounts"]]

    gateway, prometheus, controller = role(name, "gateway"), role(name, "prometheus"), role(name, "autoscaler")
    assert not any("docker.sock" in m for m in mounts(gateway) + mounts(prometheus))
    assert any("docker.sock" in m for m in mounts(controller))
    assert not controller["HostConfig"]["PortBindings"]
    assert prometheus["Config"]["User"] not in ("", "root", "0")
    replicas = [c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "echo"]
    assert all(not any("docker.sock" in m for m in mounts(c)) for c in replicas)
    # Prometheus scrapes every replica from the controller's file (it discovers nothing itself).
    query = f"http://127.0.0.1:{prom_port(root)}/api/v1/query"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        up = requests.get(query, params={"query": 'up{job="predictors",api="echo"} == 1'}, timeout=5).json()
        if len(up["data"]["result"]) == 2:
            break
        time.sleep(0.5)
    assert {r["metric"]["replica"] for r in up["data"]["result"]} == {c["Name"].lstrip("/") for c in replicas}

    # Through the gateway, the replicas' metrics and probes are not there; the gateway's 404 is JSON.
    for path in ("/metrics", "/healthz", "/readyz", "//metrics"):
        missing = requests.get(url + path, headers=AUTH, timeout=5)
        assert missing.status_code == 404 and missing.json()["error"] == "no API is served at this path", path
    assert requests.post(url, json={"a": 1}, headers=AUTH, timeout=5).status_code == 200
    assert requests.post(url, json={"a": 1}, timeout=5).status_code == 401
    # The key is nowhere the Docker API shows (environment, labels, command), nor in the image.
    for c in replicas:
        assert KEY not in json.dumps(c["Config"]), c["Name"]
        image_files = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                c["Config"]["Image"],
                "-c",
                "grep -rl " + KEY + " /app || true",
            ],
            capture_output=True,
            text=True,
        )
        assert image_files.stdout.strip() == "", image_files.stdout
        listed = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "sh", c["Config"]["Image"], "-c", "cd /app && find . -type f"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert "./predictor.py" in listed and not {"./.env", "./secrets.txt", "./certs/gateway.key"} & set(listed)
        assert "./notes.txt" not in listed and "./weights.bin" in listed, listed
        copied = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "sh", c["Config"]["Image"], "-c", "cat /app/weights.bin"],
            capture_output=True,
            text=True,
        )
        assert copied.stdout == "weights-0123"  # the link's target, copied as a file
    assert KEY not in (root / ".stack/plan/compose/compose.yaml").read_text()
    # Replicas run as the image's unprivileged user, without capabilities, and still read the keys.
    for c in replicas:
        assert c["Config"]["User"] == "10001:10001" and c["HostConfig"]["CapDrop"] == ["ALL"], c["Name"]
        who = subprocess.run(["docker", "exec", c["Id"], "id", "-u"], capture_output=True, text=True, check=True)
        assert who.stdout.strip() == "10001"
    # The API's description needs a key too; an oversize declared body is refused at once, in JSON.
    assert requests.get(url + "/openapi.json", timeout=5).status_code == 401
    assert requests.get(url + "/openapi.json", headers=AUTH, timeout=5).json()["openapi"].startswith("3.")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            f"POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 2000000000\r\n\r\n{".encode()
        )
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413") and "exceeds max_body_size" in answer, answer
    assert ((root / ".stack/plan/compose/keys/api_keys").stat().st_mode & 0o777) == 0o600
    assert ((root / ".stack/plan/compose/keys").stat().st_mode & 0o777) == 0o700

    # `docker kill` (which Docker's restart policy ignores) of a replica under load.
    victim = replicas[0]["Name"].lstrip("/")
    with Load(url, concurrency=8, timeout=20, headers=AUTH) as load:
        time.sleep(1)
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        killed_at = time.monotonic()
        wait_ready(root, 2, set(), timeout=60)
        back_after = time.monotonic() - killed_at
        time.sleep(1)
    assert back_after < 30, back_after
    # Bounded: what was in flight on the killed replica, and what Traefik had already written on
    # kept-alive connections to it before the routes dropped it (about one more per client at most);
    # and no request hung on it.
    assert load.failures <= 2 * 8 and load.codes[200] > 50, load.codes
    assert load.longest < 10, load.longest
    running = [
        c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "echo" and c["State"]["Running"]
    ]
    assert len(running) == 2  # started again, or replaced by a copy: the count is what it was

    # The gateway killed under load: the controller starts it again within 10 s, and status counts it.
    with Load(url, concurrency=4, timeout=20, headers=AUTH) as load:
        time.sleep(1)
        subprocess.run(["docker", "kill", gateway["Id"]], check=True, capture_output=True)
        killed_at = time.monotonic()
        while not _answers(url) and time.monotonic() - killed_at < 30:
            time.sleep(0.2)
        back_after = time.monotonic() - killed_at
        time.sleep(1)
    assert back_after < 10, back_after
    assert load.codes[200] > 10, load.codes
    shown = api_status(root)
    assert next(c for c in shown["components"] if c["name"] == "gateway")["restarts"] >= 1, shown["components"]

    # `docker rm -f`: the controller copies a living replica.
    other = replicas[1]["Name"].lstrip("/")
    subprocess.run(["docker", "rm", "-f", other], check=True, capture_output=True)
    api = wait_ready(root, 2, {other}, timeout=60)
    assert len([r for r in api["replicas"] if r["state"] == "ready"]) == 2
    assert requests.post(url, json={}, headers=AUTH, timeout=5).status_code == 200

    # The controller itself killed: status says so and how to fix it; `stack up` starts it again.
    subprocess.run(["docker", "kill", controller["Id"]], check=True, capture_output=True)
    notes = api_status(root)["notes"]
    assert any("controller" in n and "stack up" in n for n in notes), notes
    stack("up", str(root), cwd=root)
    assert api_status(root)["notes"] == []

    # Two commands at once: the second names the first and changes nothing (every container still there).
    before = sorted(c["Id"] for c in containers(name))
    with ProjectLock(root, "stack up (compose)"):
        second = subprocess.run([*STACK, "down", str(root)], cwd=root, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and f"`stack up (compose)` (pid {os.getpid()}" in second.stderr, second.stderr
    assert sorted(c["Id"] for c in containers(name)) == before
    until(holds(lambda: requests.post(url, json={}, headers=AUTH, timeout=5).status_code == 200), "the API answers")


def test_an_oom_kill_is_counted_and_shown(tmp_path: Path) -> None:
    root = tmp_path / "leaky"
    root.mkdir()
    shutil.copy(PREDICTORS / "leaky.py", root / "predictor.py")
    name = f"oo{int(time.time() * 1000) % 10**8}"
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}}}\n"
        "apis:\n"
        "  - name: leaky\n"
        "    predictor: {path: predictor.py, config: {leak_mb: 60}}\n"
        "    compute: {mem: 256Mi}\n"
        "    autoscaling: {min_replicas: 1, max_replicas: 1}\n"
    )
    try:
        stack("up", str(root), cwd=root)
        url = f"http://127.0.0.1:{port}/leaky"
        replica = next(c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "leaky")
        for _ in range(12):  # bounded: 60 MB a request passes 256 MiB within five
            with contextlib.suppress(requests.RequestException):
                requests.post(url, json={}, timeout=10)
            if _inspect(replica["Id"])["RestartCount"] >= 1 or _inspect(replica["Id"])["OOMKilled"]:
                break
        deadline = time.monotonic() + 60
        while True:
            api = api_status(root)["apis"][0]
            if api["restarts"] >= 1 and api["error"] and api["status"] == "live":
                break
            assert time.monotonic() < deadline, api
            time.sleep(0.5)
        assert api["error"] == "killed: out of memory (limit 256Mi)", api
        assert requests.post(url, json={}, timeout=10).json() == {"held_mb": 60}  # a fresh process again
    finally:
        remove_project(root, name)


def _inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    state = json.loads(out)[0]
    return {"RestartCount": state["RestartCount"], "OOMKilled": state["State"]["OOMKilled"]}


def test_a_container_removed_between_listing_and_inspecting_it_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`stack status` / `stack jobs` list a project's containers, then inspect them; a batch worker or a
    replaced replica removed in between is simply gone, while an engine that fails is still an error."""
    from stack.errors import StackError
    from stack.targets.docker import inspect

    created = subprocess.run(
        ["docker", "create", "--label", "stack.test=inspect", "python:3.11-slim", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        gone = subprocess.run(["docker", "create", "python:3.11-slim", "true"], capture_output=True, text=True)
        subprocess.run(["docker", "rm", gone.stdout.strip()], capture_output=True, check=True)
        found = inspect(gone.stdout.strip(), created)
        assert [item["Id"] for item in found] == [created]
        assert inspect() == []
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        with pytest.raises(StackError, match="docker inspect"):
            inspect(created)
    finally:
        subprocess.run(["docker", "rm", "-f", created], capture_output=True)


def test_a_link_to_a_file_outside_the_project_stops_the_build(tmp_path: Path) -> None:
    """`ln -s /etc/passwd weights.bin`: no image, no container; the error names the link and its target."""
    root = tmp_path / "linked"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    name = f"ln{int(time.time() * 1000) % 10**8}"
    write_spec(root, name, free_port(), free_port(), "v1")
    outside = tmp_path / "host-secret"
    outside.write_text("not for an image\n")
    (root / "weights.bin").symlink_to(outside)
    (root / "gone.bin").symlink_to(root / "nowhere")
    try:
        refused = stack("up", str(root), cwd=root, check=False)
        assert refused.returncode == 1, refused.stdout
        assert f"weights.bin -> {outside}" in refused.stderr and "gone.bin -> " in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert containers(name) == []
        images = subprocess.run(
            ["docker", "images", "-q", "--filter", f"label=stack.project={name}"], capture_output=True, text=True
        )
        assert images.stdout.strip() == ""
    finally:
        remove_project(root, name)


def test_a_copy_with_the_same_project_name_takes_nothing_over(project: tuple[Path, str, int], tmp_path: Path) -> None:
    """A copy of a running project with only its ports changed: its `up` and its `down` are refused, naming
    the directory that runs the stack; the running stack serves on, its gateway untouched."""
    root, name, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", str(root), cwd=root)
    gateway = role(name, "gateway")["Id"]
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".stack"))
    write_spec(copy, name, free_port(), free_port(), "v2")
    for command in ("up", "down", "status"):
        refused = stack(command, str(copy), cwd=copy, check=False)
        assert refused.returncode == 1, (command, refused.stdout)
        assert f"project {name} already runs on this machine from {root.resolve()}" in refused.stderr, refused.stderr
        assert f"`stack down {root.resolve()}`" in refused.stderr and "Traceback" not in refused.stderr
    assert role(name, "gateway")["Id"] == gateway
    assert requests.post(url, json={"a": 1}, headers=AUTH, timeout=5).json()["greeting"] == "v1"
