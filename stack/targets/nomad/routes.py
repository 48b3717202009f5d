"""Where a Nomad stack keeps its gateway's splitter routes: Nomad Variables, named here for the plan
(the Traefik job's template reads them) and for everything that writes them.

Traefik's job renders the variable `nomad/jobs/<project>-traefik` (item `routes`,
Traefik's dynamic configuration as YAML) into its file provider's directory;
Nomad re-renders it when the variable changes and Traefik applies it without a
restart.
"""

from __future__ import annotations

from typing import Any

import yaml

from stack.routes import Route, Split, provider_affinity, provider_splits
from stack.splits import SplitterConfig, applied

ROUTES_ITEM = "routes"
HEADER = "# The gateway's splitters (stack.targets.nomad.splits): written by `stack up`, `stack split` and canaries.\n"


def routes_variable(project: str) -> str:
    """Readable by the Traefik job itself (a variable under its own job path)."""
    return f"nomad/jobs/{project}-traefik"


def overrides_variable(project: str) -> str:
    return f"nomad/jobs/{project}-traefik/overrides"


def affinity_variable(project: str) -> str:
    """The affinity APIs' status as the controller sees it (item `status`, JSON), for `stack status --nomad`."""
    return f"nomad/jobs/{project}-autoscaler/affinity"


def canary_variable(project: str) -> str:
    return f"nomad/jobs/{project}-autoscaler/canary"


def routes_yaml(
    project: str, splitters: list[SplitterConfig], overrides: Any, canaries: Any, auth: bool = False
) -> str:
    return splits_yaml(applied(project, splitters, overrides, canaries), auth=auth)


def splits_yaml(splits: tuple[Split, ...], routes: tuple[Route, ...] = (), auth: bool = False) -> str:
    """The variable's routes: the splitters over the services Nomad's catalogue gives Traefik, and the affinity
    APIs' routers per value over their allocations (the controller keeps them current)."""
    config = provider_splits(splits, "nomad", auth)
    pinned = provider_affinity(list(routes), "nomad")
    for part in ("routers", "services", "middlewares"):
        merged = {**config.get("http", {}).get(part, {}), **pinned.get("http", {}).get(part, {})}
        if merged:
            config.setdefault("http", {})[part] = merged
    return HEADER + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)
