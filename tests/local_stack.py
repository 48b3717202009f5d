"""The local target's tests' helpers: `stack status --json`, an echo project's spec, a port listening."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

from cli import stack


def status(project: Path) -> dict:
    return json.loads(stack("status", "--local", "--json", "-p", str(project), cwd=project).stdout)


def unique_name(project: Path) -> str:
    """A project name of this directory's own: one stack per project name runs on a machine, and the suite
    runs many stacks at once."""
    return "l" + hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:10]


def write_spec(project: Path, port: int, greeting: str = "echo", min_replicas: int = 2, extra: str = "") -> None:
    (project / "stack.yaml").write_text(
        f"project: {unique_name(project)}\n"
        f"gateway: {{port: {port}}}\n"
        f"apis:\n"
        f"  - name: echo\n"
        f"    predictor:\n"
        f"      path: predictor.py\n"
        f"      config: {{greeting: {greeting}}}\n"
        f"{extra}"
        # A high target keeps the autoscaler at min_replicas under this test's light load.
        f"    autoscaling: {{min_replicas: {min_replicas}, max_replicas: 4, target_replica_concurrency: 50}}\n"
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
