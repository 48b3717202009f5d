"""Compose tests' helpers: is a real engine here, a project's containers, a test's cleanup, an echo project's spec."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli import stack


def docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI (CI installs it with ../shared/tools/docker-offline)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the Docker engine is not running (start it with ../shared/tools/docker-offline)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "Docker Compose v2 is missing (../shared/tools/docker-offline installs it)"
    if subprocess.run(["docker", "image", "inspect", "python:3.11-slim"], capture_output=True).returncode != 0:
        return "base image python:3.11-slim is missing (../shared/tools/docker-offline seeds it)"
    return None


_MISSING = docker_ready()
DOCKER = [pytest.mark.docker, pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))]
"""`pytestmark = DOCKER` in a module whose tests need the real engine: marked `docker`, skipped (saying why) without."""


def write_spec(root: Path, project: str, port: int, prom_port: int, greeting: str) -> None:
    (root / "stack.yaml").write_text(
        f"project: {project}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {prom_port}, scrape_interval: 1s}}\n"
        # No build section: the default build (wheels resolved on this host) must work here,
        # where containers reach no package index.
        "apis:\n"
        "  - name: echo\n"
        "    predictor:\n"
        "      path: predictor.py\n"
        f"      config: {{greeting: {greeting}}}\n"
        # Autoscaled, so the autoscaler service runs; a high target keeps it at min_replicas
        # under this test's light load, so the counts below are the test's own.
        "    autoscaling: {min_replicas: 2, max_replicas: 4, target_replica_concurrency: 50}\n"
    )


def containers(project: str) -> list[dict]:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout) if ids else []


def remove_project(root: Path, name: str) -> None:
    """After a test: its containers killed (no drain: nobody is waiting for them), then `stack down
    --volumes` for the network and volumes, then its images' tags.

    By tag, not by id: two projects built from the same files get the same image id (the echo tests
    do), and `docker rmi -f ID` would take the other project's tags, and the layers its build is
    standing on, with it."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    stack("down", "--volumes", str(root), cwd=root, check=False)
    listed = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{name}-*"], capture_output=True, text=True
    )
    tags = [tag for tag in listed.stdout.split() if "<none>" not in tag]
    if tags:
        subprocess.run(["docker", "rmi", *tags], capture_output=True)


def prom_port(root: Path) -> int:
    import yaml

    return yaml.safe_load((root / "stack.yaml").read_text())["prometheus"]["port"]
