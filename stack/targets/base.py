"""The one interface every target implements; the CLI talks to nothing else.

A target runs a planned stack somewhere — local processes, Docker Compose,
a Nomad cluster — and answers the same five questions the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from stack.spec import LoadedSpec
from stack.status import StackStatus

Progress = Callable[[str], None]


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
