"""The one interface every target implements; the CLI talks to nothing else.

A target runs a planned stack somewhere — local processes, Docker Compose,
a Nomad cluster — and answers the same five questions the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from stack.control.autoscale.scaler import Scaler
from stack.errors import StackError
from stack.spec import Api, LoadedSpec
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


def check_scale(loaded: LoadedSpec, api_name: str, replicas: int, force: bool, up: str, manual: bool = False) -> Api:
    """`stack scale`'s rules on every target: an autoscaled API needs --force (taking it from the
    autoscaler until the next `up`; `manual`: it was taken so already), and without --force the
    count stays within min..max."""
    api = loaded.spec.api(api_name)
    bounds = api.autoscaling
    if api.autoscaled and not force and not manual:
        raise StackError(
            f"the autoscaler owns {api.name} (min_replicas {bounds.min_replicas} != max_replicas "
            f"{bounds.max_replicas}); add --force to take it over until the next `{up}`"
        )
    if not force and not bounds.min_replicas <= replicas <= bounds.max_replicas:
        raise StackError(
            f"{replicas} is outside min_replicas..max_replicas ({bounds.min_replicas}..{bounds.max_replicas}); "
            "add --force to override"
        )
    return api


@runtime_checkable
class Target(Protocol):
    name: str  # "local", "compose", "nomad"
    loaded: LoadedSpec

    def up(self, progress: Progress) -> StackStatus:
        """Start the stack, or roll it to the spec when it runs; return once every API is reachable."""
        ...

    def status(self) -> StackStatus: ...

    def running(self) -> bool:
        """A stack of this project runs on this target now (cheap, changes nothing, never raises): how the
        CLI tells a user who forgot a target flag where their stack is."""
        ...

    def logs(self, api: str, follow: bool, since: float | None = None) -> Iterator[str]:
        """Every replica's lines of `api`, each prefixed with the replica's id as `status` shows it;
        `since`: only those written in the last this many seconds."""
        ...

    def scale(self, api: str, replicas: int, force: bool, progress: Progress) -> None:
        """Set a count by hand: within min..max, and on an autoscaled API only with `force`
        (which takes it from the autoscaler until the next `up`)."""
        ...

    def down(self, volumes: bool) -> bool:
        """Stop and remove everything; False when nothing was running."""
        ...

    def remove_images(self) -> str:
        """`stack down --images`: remove the images built for the stack on this host; what was done, in words."""
        ...

    def image_note(self) -> str:
        """What of the stack's images remains on this host and how to remove it ("" for nothing)."""
        ...

    def left_running(self) -> str:
        """After a `stack up` interrupted part-way (Ctrl-C): what of the stack runs on, and how to stop it."""
        ...

    def scaler(self) -> Scaler:
        """What the autoscaler drives to change this target's replica counts."""
        ...

    def split(self, splitter: str, weights: dict[str, int]) -> None:
        """Change a running splitter's weights until the next `up` (no replica restarts)."""
        ...

    def prometheus_url(self) -> str:
        """Where this machine reaches the running stack's Prometheus (`stack usage`); StackError when it
        cannot (no Prometheus, or one this machine cannot reach)."""
        ...

    def dashboard_url(self) -> str:
        """Where the running stack's controller serves its dashboard (stack.control.dashboard), for this
        machine's browser."""
        ...
