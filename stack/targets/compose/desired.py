"""What the Compose stack's state directory holds, shared by the host and the controller.

`desired.json`: the replica count of each API that the controller keeps.
`stack up` writes an API's count once its rolling update is done (and removes
it while one runs), `stack scale` and the autoscaler when they change it,
`stack down` empties it first so nothing is brought back.
`manual.json`: the APIs `stack scale --force` took from the autoscaler.
`decisions.json`: the autoscaler's last decisions, which `stack status` shows.
`restarts.json`: containers the controller started again (killed, stopped) and how often;
`stack status` adds these to Docker's own RestartCount.
`kills.json`: containers the kernel killed for memory, with the limit and when.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stack.atomic import write_json_atomic

DESIRED_FILE = "desired.json"  # api -> {"version": ..., "replicas": n}
MANUAL_FILE = "manual.json"
DECISIONS_FILE = "decisions.json"
RESTARTS_FILE = "restarts.json"  # container name -> times the controller started it again
KILLS_FILE = "kills.json"  # container name -> {"reason": ..., "at": unix time}


@dataclass(frozen=True)
class Desired:
    version: str
    replicas: int


def read_desired(state_dir: Path) -> dict[str, Desired]:
    """The counts to keep; an unreadable file keeps nothing (and restores nothing) rather than guessing."""
    try:
        data = json.loads((state_dir / DESIRED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    found = {}
    for name, item in data.items():
        if isinstance(item, dict) and isinstance(item.get("version"), str) and type(item.get("replicas")) is int:
            found[name] = Desired(item["version"], item["replicas"])
    return found


def write_desired(state_dir: Path, api: str, desired: Desired | None) -> None:
    """Set (or, with None, stop keeping) one API's count."""
    current = {name: {"version": d.version, "replicas": d.replicas} for name, d in read_desired(state_dir).items()}
    if desired is None:
        current.pop(api, None)
    else:
        current[api] = {"version": desired.version, "replicas": desired.replicas}
    write_json_atomic(state_dir / DESIRED_FILE, current)


def manual_apis(state_dir: Path) -> set[str]:
    """APIs `stack scale --force` set by hand; the autoscaler leaves them alone until the next `stack up`."""
    try:
        return set(json.loads((state_dir / MANUAL_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _read_map(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_restarts(state_dir: Path) -> dict[str, int]:
    return {k: v for k, v in _read_map(state_dir / RESTARTS_FILE).items() if type(v) is int}


def count_restart(state_dir: Path, container: str) -> None:
    restarts = read_restarts(state_dir)
    restarts[container] = restarts.get(container, 0) + 1
    write_json_atomic(state_dir / RESTARTS_FILE, restarts)


@dataclass(frozen=True)
class Kill:
    reason: str  # "killed: out of memory (limit 256Mi)"
    at: float  # unix time


def read_kills(state_dir: Path) -> dict[str, Kill]:
    found = {}
    for name, item in _read_map(state_dir / KILLS_FILE).items():
        if isinstance(item, dict) and isinstance(item.get("reason"), str) and isinstance(item.get("at"), (int, float)):
            found[name] = Kill(item["reason"], float(item["at"]))
    return found


def record_kill(state_dir: Path, container: str, kill: Kill) -> None:
    kills = {name: {"reason": k.reason, "at": k.at} for name, k in read_kills(state_dir).items()}
    kills[container] = {"reason": kill.reason, "at": kill.at}
    write_json_atomic(state_dir / KILLS_FILE, kills)
