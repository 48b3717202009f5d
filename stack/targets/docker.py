"""The one wrapper around the `docker` command line that the targets share."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from stack.errors import StackError

NO_DOCKER = (
    "Docker is not installed (no `docker` command). Install Docker Engine with the Compose v2 plugin, "
    "or run the stack without containers: `stack up --local`."
)


def docker(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None) -> str:
    """`docker ARGS...`'s standard output; a failure is a StackError with what Docker said."""
    try:
        result = subprocess.run(["docker", *args], capture_output=capture, text=True, timeout=timeout)
    except FileNotFoundError:
        raise StackError(NO_DOCKER) from None
    if check and result.returncode != 0:
        raise StackError(f"`docker {' '.join(args[:4])} ...` failed:\n{(result.stderr or result.stdout).strip()}")
    return result.stdout if capture else ""


def inspect(*ids: str) -> list[dict[str, Any]]:
    """`docker inspect IDS...` of the containers that still exist: one removed between listing it and
    inspecting it (a finished batch worker, a replaced replica) is simply not there any more."""
    if not ids:
        return []
    try:
        result = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
    except FileNotFoundError:
        raise StackError(NO_DOCKER) from None
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    gone = errors and all("No such object" in line or "No such container" in line for line in errors)
    if result.returncode != 0 and not gone:
        raise StackError(f"`docker inspect {' '.join(ids[:3])} ...` failed:\n{result.stderr.strip()}")
    found: list[dict[str, Any]] = json.loads(result.stdout) if result.stdout.strip() else []
    return found
