"""Where a stack runs. One package per target, each implementing `stack.targets.base.Target`:

    local/    replicas as processes behind a real Traefik, run by a supervisor (no Docker)
    compose/  one box with Docker Compose
    nomad/    a Nomad cluster, through its HTTP API

`open_target` is the only place that chooses between them for the CLI, and
`open_control` the only place that chooses a target's adapters for the stack's
controller (stack.control.runtime: the same runtime on every target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stack.errors import StackError

if TYPE_CHECKING:
    from stack.control.runtime import ControlSettings, OpenAdapters
    from stack.spec import LoadedSpec
    from stack.targets.base import Target

KINDS = ("compose", "local", "nomad")


def open_target(
    loaded: LoadedSpec,
    kind: str | None,
    *,
    gpus: int | None = None,
    gpu_mem: int | None = None,
    registry: str | None = None,
) -> Target:
    """The target named by a flag, else by `target:` in stack.yaml, else Compose. `gpus`/`gpu_mem`:
    the host's GPUs as `--gpus N --gpu-mem SIZE` gave them (None: ask nvidia-smi when planning)."""
    chosen = kind or loaded.spec.target or "compose"
    if chosen == "local":
        from stack.targets.local.target import LocalTarget

        return LocalTarget(loaded, host_gpus=gpus, gpu_mem=gpu_mem)
    if chosen == "compose":
        from stack.targets.compose.target import ComposeTarget

        return ComposeTarget(loaded, host_gpus=gpus, gpu_mem=gpu_mem)
    if chosen == "nomad":
        from stack.targets.nomad.target import NomadTarget

        return NomadTarget(loaded, registry=registry)
    raise StackError(f"unknown target {chosen!r}; choose one of {', '.join(KINDS)}")


def open_control(kind: str, settings: ControlSettings) -> OpenAdapters:
    """The adapters a target's controller runs the control plane with (opened inside its event loop)."""
    from functools import partial

    if kind == "local":
        from stack.targets.local.supervisor import local_adapters

        return partial(local_adapters, settings)
    if kind == "compose":
        from stack.targets.compose.adapters import compose_adapters

        return partial(compose_adapters, settings)
    if kind == "nomad":
        from stack.targets.nomad.adapters import nomad_adapters

        return partial(nomad_adapters, settings)
    raise StackError(f"unknown target {kind!r}; choose one of {', '.join(KINDS)}")
