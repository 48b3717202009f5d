"""The one wrapper around the `docker` command line that the targets share."""

from __future__ import annotations

import subprocess

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
