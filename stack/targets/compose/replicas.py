"""What the controller makes of the stack's replica containers, from what the engine and the probes say.

Which of an API's replicas the gateway sends requests to (`routable`):

- routed: every running replica that is not being stopped or drained and whose last probe said ready; when
  none is, but none is stuck either (a loaded machine's probes came late), every such silent replica: an
  API is never cut off for slow answers alone (Envoy's panic threshold at 100%);
- running: every running replica not being stopped, ready or not (the activator waits for them);
- failing: why its replicas keep failing (one restarting after exits), or None.

And each running replica's health as `stack status` shows it (`health_table`): the probes' word, or the
reason the controller is replacing it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from docker.models.containers import Container

from stack.control.liveness import Health
from stack.targets.compose.desired import ReplicaHealth
from stack.targets.compose.restarts import started_at


@dataclass(frozen=True)
class Routable:
    routed: list[str]  # server URLs, sorted
    running: list[str]
    failing: str | None


def routable(
    api: str,
    replicas: list[Container],
    url: Callable[[Container], str | None],
    serving: Callable[[Container], bool],
    only_silent: Callable[[Container], bool],
    stopping: Collection[str],
    draining: Collection[str],
) -> Routable:
    """`url`: a replica's server URL (None: no address yet); `serving`: running, not stopped and ready;
    `only_silent`: its probes go unanswered but it is not stuck; `stopping`/`draining`: container ids."""
    mine = [c for c in replicas if c.labels["stack.api"] == api]
    up = [c for c in mine if c.status == "running" and c.id not in stopping]

    def urls(containers: list[Container]) -> list[str]:
        return [u for c in containers if (u := url(c)) is not None]

    routed = sorted(urls([c for c in mine if serving(c)])) or sorted(
        urls([c for c in up if c.id not in draining and only_silent(c)])
    )
    failing = [c for c in mine if c.id not in stopping and c.status == "restarting"]
    why = None
    if failing:
        code = failing[0].attrs["State"].get("ExitCode", 0)
        why = f"replica {failing[0].name} keeps failing (last exit code {code})"
    return Routable(routed, urls(up), why)


def health_table(
    replicas: list[Container], health_of: Callable[[Container], Health | None], replacing: dict[str, str]
) -> dict[str, ReplicaHealth]:
    """Container name -> its health, for every running replica; `replacing`: container id -> why the
    controller is replacing it (stuck or unhealthy, whatever its last probe said)."""
    table = {}
    for c in replicas:
        if c.status != "running":
            continue
        health = health_of(c)
        word = "starting" if health is None else health.word
        if c.id in replacing:
            word = "stuck" if health is None or health.status != "unhealthy" else "unhealthy"
        table[c.name] = ReplicaHealth(
            c.id[:12],
            started_at(c),
            word,
            replacing.get(c.id) or (health.reason if health else ""),
            health.keys if health else "",
        )
    return table
