"""The one interface every target implements; the CLI talks to nothing else.

A target runs a planned stack somewhere — local processes, Docker Compose,
a Nomad cluster — and answers the same five questions the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from stack.autoscale.scaler import Scaler
from stack.errors import StackError
from stack.spec import LoadedSpec
from stack.status import StackStatus

Progress = Callable[[str], None]


def refuse_nomad_autoscaler(loaded: LoadedSpec, target: str) -> None:
    """`autoscaling.engine: nomad-autoscaler` is a Nomad job policy; elsewhere nobody would scale the API."""
    names = [a.name for a in loaded.spec.apis if a.autoscaled and a.autoscaling.engine == "nomad-autoscaler"]
    if names:
        raise StackError(
            f"API(s) {', '.join(names)} set autoscaling.engine: nomad-autoscaler, which only the Nomad target "
            f"runs (`stack up --nomad`); on the {target} target use engine: stack (the default)"
        )


@runtime_checkable
class Target(Protocol):
    name: str  # "local", "compose", "nomad"
    loaded: LoadedSpec

    def up(self, progress: Progress) -> StackStatus:
        """Start the stack, or roll it to the spec when it runs; return once every API is reachable."""
        ...

    def status(self) -> StackStatus: ...

    def logs(self, api: str, follow: bool) -> Iterator[str]:
        """Every replica's lines of `api`, each prefixed with the replica's id as `status` shows it."""
        ...

    def scale(self, api: str, replicas: int, force: bool, progress: Progress) -> None:
        """Set a count by hand: within min..max, and on an autoscaled API only with `force`
        (which takes it from the autoscaler until the next `up`)."""
        ...

    def down(self, volumes: bool) -> bool:
        """Stop and remove everything; False when nothing was running."""
        ...

    def scaler(self) -> Scaler:
        """What the autoscaler drives to change this target's replica counts."""
        ...
