"""Splitters on Nomad: the gateway's weighted routes live in a Nomad Variable.

Traefik's job renders the variable `nomad/jobs/<project>-traefik` (item
`routes`, Traefik's dynamic configuration as YAML) into its file provider's
directory; Nomad re-renders it when the variable changes and Traefik applies
it without a restart. Three writers keep it, each from the same data:
`stack up --nomad` (the spec's weights), `stack split` (weights set by hand,
kept in `.../overrides` until the next `up`), and the autoscaler job's canary
runner (its state, with the observed shares, in
`nomad/jobs/<project>-autoscaler/canary`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from stack.control.canary import STOPPED, parse_states
from stack.splits import SplitterConfig, parse_overrides, weights_at
from stack.targets.nomad.routes import (
    ROUTES_ITEM,
    affinity_variable,
    canary_variable,
    overrides_variable,
    routes_variable,
    routes_yaml,
)

if TYPE_CHECKING:
    from stack.targets.nomad.api import NomadApi


class NomadSplits:
    def __init__(self, api: NomadApi, project: str) -> None:
        self.api = api
        self.project = project

    def overrides(self) -> dict[str, dict[str, int]]:
        items = self.api.get_variable(overrides_variable(self.project)) or {}
        try:
            return parse_overrides(json.loads(items.get("weights", "{}")))
        except ValueError:
            return {}

    def set_overrides(self, overrides: dict[str, dict[str, int]]) -> None:
        self.api.put_variable(overrides_variable(self.project), {"weights": json.dumps(overrides, sort_keys=True)})

    def saved_canaries(self) -> Any:
        items = self.api.get_variable(canary_variable(self.project)) or {}
        try:
            return json.loads(items.get("state", "null"))
        except ValueError:
            return None

    def canary_weights(self, splitters: list[SplitterConfig]) -> dict[str, dict[str, int]]:
        """The weights the canaries have set, as saved (those of a canary the next `up` restarts excluded)."""
        states = parse_states(self.saved_canaries())
        weights = {}
        for s in splitters:
            state = states.get(s.name)
            if s.canary and state and state.revision == s.canary.revision and state.phase != STOPPED:
                weights[s.name] = weights_at(s.weights, s.canary.api, state.weight(s.canary))
        return weights

    def write_routes(
        self, splitters: list[SplitterConfig], canaries: dict[str, dict[str, int]] | None = None, auth: bool = False
    ) -> None:
        """`auth`: named keys, the splitters' routers ask the controller first."""
        if not splitters:
            self.api.delete_variable(routes_variable(self.project))
            return
        self.write_yaml(routes_yaml(self.project, splitters, self.overrides(), canaries or {}, auth))

    def read_yaml(self) -> str | None:
        """The gateway's routes as its variable holds them now (None: no variable)."""
        items = self.api.get_variable(routes_variable(self.project))
        return None if items is None else items.get(ROUTES_ITEM)

    def write_yaml(self, text: str) -> None:
        """The gateway's splitter routes (stack.targets.nomad.routes.splits_yaml) into its variable."""
        self.api.put_variable(routes_variable(self.project), {ROUTES_ITEM: text})

    def forget(self) -> None:
        for path in (routes_variable, overrides_variable, canary_variable, affinity_variable):
            self.api.delete_variable(path(self.project))


class NomadCanaryStore:
    """The canary runner's state in a Nomad Variable (the autoscaler job keeps no disk)."""

    def __init__(self, splits: NomadSplits) -> None:
        self.splits = splits

    def __str__(self) -> str:
        return f"the Nomad Variable {canary_variable(self.splits.project)}"

    def load(self) -> Any:
        return self.splits.saved_canaries()

    def save(self, data: dict[str, Any]) -> None:
        self.splits.api.put_variable(canary_variable(self.splits.project), {"state": json.dumps(data, sort_keys=True)})


def rolling_out(api: NomadApi, job_id: str) -> str | None:
    """Why a canary cannot be judged now: a Nomad deployment of its job is still replacing allocations."""
    try:
        deployment = api.deployment(job_id)
    except Exception:  # an unreachable cluster: the counters still tell, judge on them
        return None
    if deployment and deployment.get("Status") == "running":
        return f"{job_id} is rolling out its new version (Nomad deployment {str(deployment.get('ID', ''))[:8]} running)"
    return None
