"""`stack up/status/logs/scale/down --nomad` end to end: contract tests.

No Nomad binary can run here, so the cluster is tests/nomad_standin.py, a
stand-in of Nomad's HTTP API that validates every job against Nomad's OpenAPI
description (objects closed) and simulates allocations and deployments. When
NOMAD_ADDR is set in the environment, the end-to-end test runs against that
real cluster instead (the fault-injection tests need the stand-in).

The image registry is real: Debian's `docker-registry` (distribution v2) on
127.0.0.1 with a temporary storage directory; the tests read the pushed
manifests back from it. Images are built on the real Docker engine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import STACK, Ran
from cli import stack as run_stack
from common import EXAMPLES, free_port
from docker_stack import DOCKER
from nomad_standin import Failure, NomadStandIn

REAL_NOMAD = os.environ.get("NOMAD_ADDR")
pytestmark = DOCKER
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def stack(*args: str, cwd: Path, env: dict[str, str], check: bool = True) -> Ran:
    return run_stack(*args, cwd=cwd, env=env, check=check)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not on PATH: `apt-get install docker-registry` (.ci/run installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise AssertionError((root / "registry.log").read_text()) from None
    yield address
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def nomad() -> Iterator[NomadStandIn | None]:
    if REAL_NOMAD:
        yield None
        return
    standin = NomadStandIn().start()
    yield standin
    standin.stop()
    assert standin.problems == [], standin.problems  # nothing we sent, nor it answered, broke the schema


def nomad_env(nomad: NomadStandIn | None) -> dict[str, str]:
    return {"NOMAD_ADDR": REAL_NOMAD or (nomad.address if nomad else "")}


def write_project(root: Path, name: str, greeting: str, autoscaled: bool = True, extra: str = "") -> None:
    if not root.exists():
        shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    scaling = "{min_replicas: 2, max_replicas: 4}" if autoscaled else "{min_replicas: 2, max_replicas: 2}"
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        "target: nomad\n"
        f"{extra}"
        "apis:\n"
        "  - name: echo\n"
        "    predictor:\n"
        "      path: predictor.py\n"
        f"      config: {{greeting: {greeting}}}\n"
        f"    autoscaling: {scaling}\n"
    )


def unique(prefix: str) -> str:
    return f"{prefix}{int(time.time() * 1000) % 10**8}"


def manifest(registry: str, name: str, tag: str) -> requests.Response:
    return requests.get(f"http://{registry}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST}, timeout=10)


def test_up_status_logs_scale_down(tmp_path: Path, registry: str, nomad: NomadStandIn | None) -> None:
    root, name = tmp_path / "echo", unique("nomad")
    keys = "gateway:\n  api_keys_file: keys.txt\n"
    write_project(root, name, "v1", extra=keys)
    (root / "keys.txt").write_text("nomad-test-key-1\n")
    env = nomad_env(nomad)
    up = stack("up", str(root), "--registry", registry, cwd=root, env=env)  # `target: nomad` in stack.yaml
    assert f"{name}-echo: registering" in up.stderr and "deployment successful, 2/2 healthy" in up.stderr
    status = json.loads(stack("status", str(root), "--json", cwd=root, env=env).stdout)
    api = status["apis"][0]
    assert status["target"] == "nomad" and api["status"] == "live" and (api["ready"], api["desired"]) == (2, 2)
    version = api["version"]
    # The image was pushed to the real registry under REGISTRY/PROJECT-API:VERSION, and the job names it.
    assert manifest(registry, f"{name}-echo", version).status_code == 200
    assert manifest(registry, "stack-autoscaler", "0.1.0").status_code == 200
    if nomad is not None:
        job = nomad.jobs[f"{name}-echo"].job
        assert job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == f"{registry}/{name}-echo:{version}"
        assert {f"{name}-traefik", f"{name}-prometheus", f"{name}-autoscaler"} <= set(nomad.jobs)
        assert (root / ".stack/plan/nomad" / f"{name}-echo.json").stat().st_mode & 0o777 == 0o600
        # The API keys are a Nomad Variable the job renders into its secrets directory, never in the job.
        assert nomad.variables[f"nomad/jobs/{name}-echo"]["Items"] == {"api_keys": "nomad-test-key-1\n"}
        assert "nomad-test-key-1" not in json.dumps(job)

    # Logs through the client fs API, each line prefixed with its allocation.
    logs = stack("logs", str(root), "echo", cwd=root, env=env).stdout.splitlines()
    replicas = {r["id"] for r in api["replicas"]}
    assert logs and {line.split(" | ")[0] for line in logs} == replicas
    assert all("ready: api" in line for line in logs)

    # Unchanged: nothing registered again.
    before = len(nomad.requests) if nomad else 0
    again = stack("up", str(root), "--registry", registry, cwd=root, env=env)
    assert f"{name}-echo: unchanged" in again.stderr
    if nomad is not None:
        assert not [r for r in nomad.requests[before:] if r[:2] == ("POST", "/v1/jobs")]

    # Keys rotated: only the variable changes (its template re-renders, change_mode noop, the replicas follow
    # the file): no job is registered again, nothing restarts.
    (root / "keys.txt").write_text("nomad-test-key-2\n")
    before = len(nomad.requests) if nomad else 0
    rotated = stack("up", str(root), "--registry", registry, cwd=root, env=env)
    assert f"{name}-echo: unchanged" in rotated.stderr
    if nomad is not None:
        assert nomad.variables[f"nomad/jobs/{name}-echo"]["Items"] == {"api_keys": "nomad-test-key-2\n"}
        assert not [r for r in nomad.requests[before:] if r[:2] == ("POST", "/v1/jobs")]
        template = nomad.jobs[f"{name}-echo"].job["TaskGroups"][0]["Tasks"][0]["Templates"][0]
        assert template["ChangeMode"] == "noop" and template["DestPath"] == "secrets/api_keys"

    # A change is a new version, rolled out by Nomad.
    write_project(root, name, "v2", extra=keys)
    stack("up", str(root), "--registry", registry, cwd=root, env=env)
    updated = json.loads(stack("status", str(root), "--json", cwd=root, env=env).stdout)["apis"][0]
    assert updated["version"] != version and updated["status"] == "live"

    # Scale: the autoscaler owns the API; --force takes it until the next `up`, which hands it back.
    refused = stack("scale", str(root), "echo", "3", cwd=root, env=env, check=False)
    assert refused.returncode == 1 and "the autoscaler owns echo" in refused.stderr
    # `stack logs --follow`, started before the scale-out, follows the allocation it places too.
    follower = subprocess.Popen(
        [*STACK, "logs", str(root), "echo", "--follow"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, **env},
    )
    followed: list[str] = []
    reader = threading.Thread(target=lambda: followed.extend(follower.stdout or []), daemon=True)
    reader.start()
    try:
        stack("scale", str(root), "echo", "3", "--force", cwd=root, env=env)
        assert json.loads(stack("status", str(root), "--json", cwd=root, env=env).stdout)["apis"][0]["desired"] == 3
        deadline = time.monotonic() + 60
        while True:
            scaled = json.loads(stack("status", str(root), "--json", cwd=root, env=env).stdout)["apis"][0]
            ids = {r["id"] for r in scaled["replicas"] if r["state"] == "ready"}
            shown = {line.split(" | ", 1)[0] for line in followed if "ready: api" in line}
            if len(ids) == 3 and ids <= shown:
                break
            assert time.monotonic() < deadline, (scaled["replicas"], followed)
            time.sleep(0.5)
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)
        if follower.stdout is not None:
            follower.stdout.close()
    if nomad is not None:
        import asyncio

        from stack.control.autoscale.config import ApiScaling
        from stack.control.autoscale.policy import Bounds
        from stack.targets.nomad.connection import NomadSettings
        from stack.targets.nomad.scaler import NomadScaler

        scaler = NomadScaler(name, NomadSettings.from_env(nomad.address).client())
        bounds = ApiScaling("echo", Bounds(min_replicas=2, max_replicas=4, target=1.0))
        assert "set by hand" in asyncio.run(scaler.replicas(bounds)).busy
        handed = stack("up", str(root), "--registry", registry, cwd=root, env=env)
        assert "echo: handed back to the autoscaler" in handed.stderr
        assert asyncio.run(scaler.replicas(bounds)).busy == ""

    assert stack("down", str(root), cwd=root, env=env).stdout.strip() == "stopped"
    stopped = json.loads(stack("status", str(root), "--json", cwd=root, env=env).stdout)["apis"][0]
    assert stopped["status"] == "stopped"
    assert stack("down", str(root), "--purge", cwd=root, env=env).stdout.strip() == "stopped"
    assert stack("down", str(root), cwd=root, env=env).stdout.strip() == "nothing was running"
    if nomad is not None:
        assert not [j for j in nomad.jobs if j.startswith(name)]
        assert not [v for v in nomad.variables if name in v]  # purged with the jobs


@pytest.mark.skipif(bool(REAL_NOMAD), reason="injects a failing deployment into the stand-in")
def test_a_failed_deployment_is_reported_with_events_and_logs(
    tmp_path: Path, registry: str, nomad: NomadStandIn
) -> None:
    root, name = tmp_path / "echo", unique("fail")
    write_project(root, name, "v1", autoscaled=False)
    env = nomad_env(nomad)
    stack("up", str(root), "--nomad", "--registry", registry, cwd=root, env=env)
    nomad.fail[f"{name}-echo"] = Failure(
        events=[
            {"Type": "Started", "DisplayMessage": "Task started by client"},
            {"Type": "Terminated", "DisplayMessage": "Exit Code: 3"},
            {"Type": "Not Restarting", "DisplayMessage": "Exceeded allowed attempts 3 in interval 5m0s"},
        ],
        log="ERROR predictor failed to start: /app/predictor.py:9: Predictor.__init__ failed: RuntimeError: boom\n",
    )
    write_project(root, name, "v2", autoscaled=False)
    result = stack("up", str(root), "--nomad", "--registry", registry, cwd=root, env=env, check=False)
    assert result.returncode == 1
    error = result.stderr
    assert "the deployment of API echo failed (Failed due to unhealthy allocations" in error
    assert "auto_revert rolls the job back" in error
    assert "Not Restarting: Exceeded allowed attempts 3 in interval 5m0s" in error
    assert "Predictor.__init__ failed: RuntimeError: boom" in error
    # Nomad reverted: the job runs the previous version again, healthy.
    api = json.loads(stack("status", str(root), "--json", "--nomad", cwd=root, env=env).stdout)["apis"][0]
    assert api["ready"] == 2
    stack("down", str(root), "--nomad", "--purge", cwd=root, env=env)


@pytest.mark.skipif(bool(REAL_NOMAD), reason="needs the stand-in's ACL, namespaces and nodes")
def test_errors_name_the_fix(tmp_path: Path, registry: str) -> None:
    root, name = tmp_path / "echo", unique("err")
    write_project(root, name, "v1", autoscaled=False)

    no_registry = stack("up", str(root), "--nomad", cwd=root, env={"NOMAD_ADDR": "http://127.0.0.1:1"}, check=False)
    assert no_registry.returncode == 1 and "pass --registry HOST:PORT or set build.registry" in no_registry.stderr

    unreachable = stack(
        "up",
        str(root),
        "--registry",
        registry,
        cwd=root,
        env={"NOMAD_ADDR": f"http://127.0.0.1:{free_port()}/"},
        check=False,
    )
    assert unreachable.returncode == 1 and "cannot reach Nomad at http://127.0.0.1:" in unreachable.stderr
    assert "Set NOMAD_ADDR" in unreachable.stderr

    locked = NomadStandIn(token="s3cret", namespaces=("default", "ml")).start()
    try:
        env = {"NOMAD_ADDR": locked.address, "NOMAD_TOKEN": "wrong"}
        denied = stack("up", str(root), "--registry", registry, cwd=root, env=env, check=False)
        assert denied.returncode == 1 and "Nomad refused to reach the cluster (403" in denied.stderr
        assert "NOMAD_TOKEN" in denied.stderr
        env = {"NOMAD_ADDR": locked.address, "NOMAD_TOKEN": "s3cret", "NOMAD_NAMESPACE": "nope"}
        namespace = stack("up", str(root), "--registry", registry, cwd=root, env=env, check=False)
        assert (
            namespace.returncode == 1 and "Nomad namespace 'nope' (NOMAD_NAMESPACE) does not exist" in namespace.stderr
        )

        # A GPU API on a cluster without NVIDIA devices: refused before anything is registered.
        text = (root / "stack.yaml").read_text().replace("    autoscaling:", "    compute: {gpu: 1}\n    autoscaling:")
        (root / "stack.yaml").write_text(text)
        env = {"NOMAD_ADDR": locked.address, "NOMAD_TOKEN": "s3cret"}
        gpu = stack("up", str(root), "--registry", registry, cwd=root, env=env, check=False)
        assert gpu.returncode == 1 and "no ready Nomad client offers any" in gpu.stderr
        assert not locked.jobs

        # The registry refuses the push: said, and nothing registered.
        write_project(root, name, "v1", autoscaled=False)
        dead = f"127.0.0.1:{free_port()}"
        push = stack("up", str(root), "--registry", dead, cwd=root, env=env, check=False)
        assert push.returncode == 1 and f"pushing {dead}/{name}-echo:" in push.stderr
        assert "Nothing was registered with Nomad" in push.stderr and not locked.jobs
        assert locked.problems == []
    finally:
        locked.stop()


def test_a_copy_with_the_same_project_name_touches_nothing_of_the_running_stack(
    tmp_path: Path, registry: str, nomad: NomadStandIn | None
) -> None:
    """Contract test: the jobs carry who registered them (Meta stack_owner: host and directory); `up`,
    `scale` and `down` from a copy of the project are refused before anything is pushed or registered."""
    root, name = tmp_path / "echo", unique("nomadown")
    write_project(root, name, "v1")
    env = nomad_env(nomad)
    stack("up", str(root), "--registry", registry, cwd=root, env=env)
    copy = tmp_path / "copy"
    write_project(copy, name, "v2")
    try:
        for args in (["up", str(copy), "--registry", registry], ["scale", str(copy), "echo", "3"], ["down", str(copy)]):
            refused = stack(*args, cwd=copy, env=env, check=False)
            assert refused.returncode == 1, args
            assert f"project {name} already runs on Nomad" in refused.stderr, refused.stderr
            assert f"registered from {socket.gethostname()}:{root.resolve()}" in refused.stderr
            assert "Traceback" not in refused.stderr
        status = json.loads(stack("status", str(root), "--json", cwd=root, env=env).stdout)
        assert status["apis"][0]["status"] == "live"
        if nomad is not None:
            assert nomad.jobs[f"{name}-echo"].job["Meta"]["stack_owner"] == f"{socket.gethostname()}:{root.resolve()}"
            assert "v2" not in json.dumps(nomad.jobs[f"{name}-echo"].job)
    finally:
        stack("down", str(root), cwd=root, env=env, check=False)
