"""Traffic splitters as the gateway applies them: the spec's weights, or `stack split`'s.

`stack split NAME API=W ...` changes a running stack's weights without editing
stack.yaml: it writes `splits.json` in the target's state directory, which the
local supervisor and the Compose controller re-read every second and apply as
routes (no replica restarts). The next `stack up` removes it, re-applying the
file's weights; until then `stack status` says the weights are overridden.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stack.atomic import write_json_atomic
from stack.errors import StackError
from stack.routes import Split, member_service

OVERRIDES_FILE = "splits.json"


@dataclass(frozen=True)
class CanaryConfig:
    """A splitter's `canary:` block as plain data (the Compose controller gets it as JSON)."""

    api: str
    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval: float = 60.0
    max_error_rate: float = 0.01
    max_latency_ratio: float | None = 1.5
    latency_floor: float = 0.05
    min_requests: int = 50
    revision: str = ""  # the canary API's version and this block: a new one starts a new canary

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryConfig:
        return cls(**{**data, "steps": tuple(int(s) for s in data["steps"])})


def canary_of(block: Any, version: str) -> CanaryConfig:
    """The spec's canary block (stack.spec.models.Canary) for a canary API at `version`."""
    settings = block.model_dump()
    revision = hashlib.sha256(f"{json.dumps(settings, sort_keys=True)}\0{version}".encode()).hexdigest()[:12]
    return CanaryConfig(**{**settings, "steps": tuple(settings["steps"]), "revision": revision})


@dataclass(frozen=True)
class SplitterConfig:
    """A splitter of the spec, as plain data (the Compose controller gets it as JSON)."""

    name: str
    endpoint: str
    weights: list[tuple[str, int]]
    mirror: tuple[str, int] | None = None
    sticky: bool = False
    canary: CanaryConfig | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitterConfig:
        mirror = data.get("mirror")
        canary = data.get("canary")
        return cls(
            data["name"],
            data["endpoint"],
            [(str(a), int(w)) for a, w in data["weights"]],
            (str(mirror[0]), int(mirror[1])) if mirror else None,
            bool(data.get("sticky", False)),
            CanaryConfig.from_dict(canary) if canary else None,
        )


def weights_at(members: list[tuple[str, int]], canary: str, percent: int) -> dict[str, int]:
    """The splitter's weights with `percent` for the canary; the baseline shares the rest as in stack.yaml."""
    others = [(api, weight) for api, weight in members if api != canary]
    total = sum(weight for _, weight in others)
    shares = [(api, weight if total else 1) for api, weight in others]
    total = sum(weight for _, weight in shares)
    rest = 100 - percent
    exact = [(api, rest * weight / total) for api, weight in shares]
    result = {api: math.floor(value) for api, value in exact}
    # Largest remainder: the baseline's whole numbers add up to exactly 100 - percent.
    for api, _ in sorted(exact, key=lambda item: item[1] - math.floor(item[1]), reverse=True)[
        : rest - sum(result.values())
    ]:
        result[api] += 1
    return {api: percent if api == canary else result[api] for api, _ in members}


# -- the runner ---------------------------------------------------------------------------------------


def splitters_of(spec: Any, versions: dict[str, str] | None = None) -> list[SplitterConfig]:
    """The spec's splitters; `versions` (API -> version) ties each canary to the version it rolls out."""
    return [
        SplitterConfig(
            s.name,
            s.endpoint,
            [(a.name, a.weight) for a in s.apis],
            (s.mirror.api, s.mirror.percent) if s.mirror else None,
            s.sticky,
            canary_of(s.canary, (versions or {}).get(s.canary.api, "")) if s.canary else None,
        )
        for s in spec.splitters
    ]


def read_overrides(state_dir: Path) -> dict[str, dict[str, int]]:
    """The weights `stack split` set; an unreadable file overrides nothing."""
    try:
        return parse_overrides(json.loads((state_dir / OVERRIDES_FILE).read_text()))
    except (OSError, ValueError):
        return {}


class FileSplits:
    """The weights `stack split` set, in `splits.json` of a state directory (local and Compose)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def overrides(self) -> dict[str, dict[str, int]]:
        return read_overrides(self.state_dir)


def parse_overrides(data: Any) -> dict[str, dict[str, int]]:
    if not isinstance(data, dict):
        return {}
    found: dict[str, dict[str, int]] = {}
    for name, weights in data.items():
        if isinstance(weights, dict) and all(isinstance(w, int) and w >= 0 for w in weights.values()):
            found[str(name)] = {str(k): int(v) for k, v in weights.items()}
    return found


def with_override(
    current: dict[str, dict[str, int]], splitters: list[SplitterConfig], name: str, weights: dict[str, int]
) -> dict[str, dict[str, int]]:
    """`current` overrides plus `weights` for splitter `name`, checked against it."""
    splitter = next((s for s in splitters if s.name == name), None)
    if splitter is None:
        known = ", ".join(s.name for s in splitters) or "none"
        raise StackError(f"no splitter named {name!r}; the spec has: {known}")
    members = {api for api, _ in splitter.weights}
    unknown = sorted(set(weights) - members)
    if unknown:
        raise StackError(f"splitter {name} has no API {', '.join(unknown)}; its APIs: {', '.join(sorted(members))}")
    now = current.get(name) or dict(splitter.weights)  # APIs not named keep the weight they have now
    merged = {api: weights.get(api, now.get(api, weight)) for api, weight in splitter.weights}
    if not any(merged.values()):
        raise StackError(f"splitter {name}: at least one API needs a weight above 0")
    return {**current, name: merged}


def set_override(state_dir: Path, splitters: list[SplitterConfig], name: str, weights: dict[str, int]) -> None:
    """Check `weights` against the splitter and keep them until the next `stack up`."""
    write_json_atomic(state_dir / OVERRIDES_FILE, with_override(read_overrides(state_dir), splitters, name, weights))


def clear_overrides(state_dir: Path) -> None:
    (state_dir / OVERRIDES_FILE).unlink(missing_ok=True)


def applied(
    project: str,
    splitters: list[SplitterConfig],
    overrides: dict[str, dict[str, int]],
    canaries: dict[str, dict[str, int]] | None = None,
) -> tuple[Split, ...]:
    """The splits the gateway runs now: weights set by `stack split`, else a canary's, else stack.yaml's."""
    result = []
    for s in splitters:
        weights = overrides.get(s.name) or (canaries or {}).get(s.name) or dict(s.weights)
        result.append(
            Split(
                split_router(project, s.name),
                s.endpoint,
                tuple((f"{project}-{api}", weights.get(api, w)) for api, w in s.weights),
                (f"{project}-{s.mirror[0]}", s.mirror[1]) if s.mirror else None,
                f"stack_split_{s.name}" if s.sticky else None,
            )
        )
    return tuple(result)


def split_router(project: str, splitter: str) -> str:
    return f"{project}-split-{splitter}"


def member_services(project: str, splitter: SplitterConfig) -> dict[str, str]:
    """API -> the gateway's service for it inside this splitter (its requests are counted apart)."""
    router = split_router(project, splitter.name)
    return {api: member_service(router, f"{project}-{api}") for api, _ in splitter.weights}


def parse_weights(pairs: tuple[str, ...]) -> dict[str, int]:
    weights: dict[str, int] = {}
    for pair in pairs:
        api, sep, value = pair.partition("=")
        if not sep or not value.isdigit():
            raise StackError(f"expected API=WEIGHT (a whole number, 0 or more), got {pair!r}")
        weights[api] = int(value)
    return weights


def wait_applied(routes_file: Path, split: Split, timeout: float = 10.0) -> bool:
    """True once the routes file carries `split`'s weights (the gateway picks the file up at once)."""
    deadline = time.monotonic() + timeout
    want = [{"name": member_service(split.router, svc), "weight": weight} for svc, weight in split.weights]
    while time.monotonic() < deadline:
        try:
            data = yaml.safe_load(routes_file.read_text()) or {}
            if data["http"]["services"][split.router]["weighted"]["services"] == want:
                return True
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            pass
        time.sleep(0.1)
    return False


def change(
    state_dir: Path,
    routes_file: Path,
    project: str,
    splitters: list[SplitterConfig],
    name: str,
    weights: dict[str, int],
) -> None:
    """`stack split` on a target whose gateway routes come from `routes_file`."""
    set_override(state_dir, splitters, name, weights)
    split = next(
        s for s in applied(project, splitters, read_overrides(state_dir)) if s.router.endswith(f"-split-{name}")
    )
    if not wait_applied(routes_file, split):
        raise StackError(
            f"the new weights of {name} are saved but the gateway's routes did not take them within 10s; "
            "is the stack running? (`stack status`)"
        )
