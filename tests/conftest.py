"""Shared helpers: start the real server as a subprocess and talk to it over HTTP."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from common import ServerFactory, _listening, free_port


@pytest.fixture(scope="session", autouse=True)
def _own_state_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The machine-wide record of which directory runs each local project name (stack.targets.local.names)
    is this test run's own: a developer's stacks neither block the suite nor are blocked by it."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def inproc() -> Iterator[Any]:
    """Start replicas in this process: `inproc(PREDICTORS / "x.py", threads_per_process=2)`."""
    from inprocess import InProcessReplica

    started: list[InProcessReplica] = []

    def start(predictor: str | Path, **fields: Any) -> InProcessReplica:
        replica = InProcessReplica(predictor, **fields)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.close()


@pytest.fixture
def standin() -> Iterator[Any]:
    """The contract stand-in of Nomad's HTTP API (tests/nomad_standin.py); every job it was sent must
    have validated against Nomad's OpenAPI file."""
    from nomad_standin import NomadStandIn

    started = NomadStandIn().start()
    yield started
    started.stop()
    assert started.problems == [], started.problems


@pytest.fixture
def s3() -> Iterator[dict[str, str]]:
    if shutil.which("moto_server") is None or importlib.util.find_spec("boto3") is None:
        pytest.skip("moto_server or boto3 missing: pip install 'moto[server]' boto3")
    port = free_port()
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    deadline = time.monotonic() + 30
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("moto_server did not start listening")
        time.sleep(0.05)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    proc.wait(10)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need the Docker engine run one after another, on one worker (`--dist loadgroup`):
    the engine is one shared machine-wide resource (one test restarts it); everything else is spread over
    the other workers."""
    for item in items:
        if item.get_closest_marker("docker") is not None:
            item.add_marker(pytest.mark.xdist_group("docker"))


DOCKER_LOCK = Path(tempfile.gettempdir()) / "stack-tests-docker.lock"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """... and never two at once whatever the scheduler did: a Docker test (its fixtures' setup and teardown
    with it) holds a lock every worker shares. `--dist loadgroup` is what keeps them on one worker, and it
    silently stops grouping with pytest 9.2 (pytest-dev/pytest-xdist#1386: pyproject pins pytest below it);
    this lock keeps the engine's tests apart even then."""
    if item.get_closest_marker("docker") is None:
        return (yield)
    with open(DOCKER_LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            return (yield)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
