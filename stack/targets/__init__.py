"""Where a stack runs. One package per target, each implementing `stack.targets.base.Target`:

    local/    replicas as processes behind a real Traefik, run by a supervisor (no Docker)
    compose/  one box with Docker Compose
    nomad/    a Nomad cluster, through its HTTP API

`open_target` is the only place that chooses between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stack.errors import StackError

if TYPE_CHECKING:
    from stack.spec import LoadedSpec
    from stack.targets.base import Target

KINDS = ("compose", "local", "nomad")


def open_target(
    loaded: LoadedSpec, kind: str | None, *, gpus: int | None = None, registry: str | None = None
) -> Target:
    """The target named by a flag, else by `target:` in stack.yaml, else Compose."""
    chosen = kind or loaded.spec.target or "compose"
    if chosen == "local":
        from stack.targets.local.target import LocalTarget

        return LocalTarget(loaded)
    if chosen == "compose":
        from stack.targets.compose.target import ComposeTarget

        return ComposeTarget(loaded, host_gpus=gpus)
    if chosen == "nomad":
        from stack.targets.nomad.target import NomadTarget

        return NomadTarget(loaded, registry=registry)
    raise StackError(f"unknown target {chosen!r}; choose one of {', '.join(KINDS)}")
