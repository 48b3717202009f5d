"""What `stack status` says of a Compose stack beyond its replicas: the gateway, Prometheus and the
controller (running, and if not, why and what to do), restarts, and kills for memory."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stack.errors import StackError
from stack.status import ComponentStatus
from stack.targets.compose.desired import Kill
from stack.targets.compose.engine import PROJECT_LABEL, Container
from stack.targets.docker import docker

ROLES = {  # role label -> (name in `stack status`, what brings it back)
    "gateway": ("gateway", "the controller starts it again within 10 s; if it stays down, `stack up` brings it back"),
    "prometheus": (
        "prometheus",
        "the controller starts it again within 10 s (the autoscaler holds meanwhile); if it stays down, "
        "`stack up` brings it back",
    ),
    "autoscaler": (
        "controller",
        "nothing watches the controller itself: routes, counts and restarts wait for it; `stack up` starts it again",
    ),
}


def components(containers: list[Container], restarted: dict[str, int]) -> list[ComponentStatus]:
    """The stack's own containers; a role with no container at all is missing too."""
    found = []
    for role, (name, fix) in ROLES.items():
        mine = [c for c in containers if c.role == role]
        if not mine:
            found.append(ComponentStatus(name, False, role, f"its container is gone; {fix}"))
            continue
        for c in mine:
            running = c.state == "running"
            why = "" if running else f"{c.state} ({_exit(c.exit_code)}{_since(c.finished_at)}); {fix}"
            found.append(ComponentStatus(name, running, c.name, why, restarts(c, restarted)))
    return found


def restarts(container: Container, restarted: dict[str, int]) -> int:
    """The controller counts every new start of a container, whatever caused it (Docker's policy after a crash
    or an OOM kill, the controller bringing back a killed one, an engine restart), and keeps the count across
    engine restarts, which reset Docker's own RestartCount; Docker's count stands in while it is higher (the
    controller was down meanwhile)."""
    return max(container.restarts, restarted.get(container.name, 0))


def last_kill(mine: list[Container], kills: dict[str, Kill]) -> str | None:
    """The latest kill for memory of these replicas, as `killed: out of memory (limit 256Mi)`."""
    recorded = sorted((kills[c.name].at, c.name) for c in mine if c.name in kills)
    return kills[recorded[-1][1]].reason if recorded else None


def _exit(code: int) -> str:
    return f"exit code {code}" + (f", signal {code - 128}" if code > 128 else "")


def _since(finished_at: str) -> str:
    stamp = finished_at.rstrip("Z").partition(".")[0]
    return f", at {stamp.replace('T', ' ')} UTC" if stamp and not stamp.startswith("0001") else ""


def left_running(project: str, root: Path) -> str:
    """What a `stack up` interrupted part-way leaves running (its containers), and how to stop it."""
    try:
        started = docker("ps", "-q", "--filter", f"label={PROJECT_LABEL}={project}", timeout=10).split()
    except (StackError, subprocess.TimeoutExpired):
        started = ["?"]  # the engine did not say: assume the worst
    if not started:
        return "nothing of the stack was started"
    return (
        f"the containers of {project} that had started run on: `stack status -p {root}` shows them, "
        f"`stack up {root}` finishes the update, `stack down {root}` removes them"
    )
