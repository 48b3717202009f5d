"""Where a stack runs: one package per target, registered in one table (`TARGETS`).

    local/    replicas as processes behind a real Traefik, run by a supervisor (no Docker)
    compose/  one box with Docker Compose
    nomad/    a Nomad cluster, through its HTTP API

Every target's package has the same modules for the same roles:

    target    its `Target` (stack.targets.base): up, status, logs, scale, down; and `open_target`
    plan      its planner: the typed `stack.plan.Plan` (files, digest, versions, images, placement, routes)
    fleet     what keeps its replicas for the control plane (stack.control.runtime.Fleet)
    adapters  `adapters(settings, own, session)`: everything its controller runs the control plane with
    scaler    what the autoscaler drives to change a count (stack.control.autoscale.scaler.Scaler)
    settings  what its controller needs beyond the shared `ControlSettings`

A new target (Swarm, Kubernetes) is one such package and one row below. `open_target` (for the CLI) and
`open_control` (for a stack's controller) are the only places that choose between them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

from stack.errors import StackError

if TYPE_CHECKING:
    from stack.control.runtime import ControlSettings, OpenAdapters
    from stack.spec import LoadedSpec
    from stack.targets.base import Target


@dataclass(frozen=True)
class TargetKind:
    name: str  # how a flag and `target:` in stack.yaml name it
    package: str  # the package that holds it, with the modules above
    summary: str

    def module(self, role: str) -> ModuleType:
        return importlib.import_module(f"{self.package}.{role}")


TARGETS = {
    kind.name: kind
    for kind in (
        TargetKind("compose", "stack.targets.compose", "one box with Docker Compose"),
        TargetKind("local", "stack.targets.local", "replicas as processes behind a real Traefik, no Docker"),
        TargetKind("nomad", "stack.targets.nomad", "an on-prem Nomad cluster, through its HTTP API"),
    )
}
KINDS = tuple(TARGETS)
DEFAULT = "compose"


def kind(name: str) -> TargetKind:
    found = TARGETS.get(name)
    if found is None:
        raise StackError(f"unknown target {name!r}; choose one of {', '.join(KINDS)}")
    return found


def open_target(loaded: LoadedSpec, name: str | None, **options: Any) -> Target:
    """The target named by a flag, else by `target:` in stack.yaml, else Compose; `options`: what the CLI's
    flags say of this host (`gpus`, `gpu_mem`, `registry`), each target taking what it needs."""
    chosen = kind(name or loaded.spec.target or DEFAULT)
    target: Target = chosen.module("target").open_target(loaded, **options)
    return target


def open_control(name: str, settings: ControlSettings, own: object) -> OpenAdapters:
    """The adapters a target's controller runs the control plane with (opened inside its event loop);
    `own`: that target's settings (stack.targets.<name>.settings)."""
    adapters = kind(name).module("adapters").adapters
    return partial(adapters, settings, own)
