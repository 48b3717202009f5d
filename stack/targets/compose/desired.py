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
`starts.json`: when the controller last saw each container start (Docker's StartedAt): a new start is
a restart, whatever caused it (Docker's policy, the controller, an engine restart), counted in
`restarts.json`, which outlives the engine (Docker's own RestartCount does not).
`health.json`: what the controller's probes say of each replica (stack.control.liveness): its health
word, why, and the API keys it applies; `stack status` and `stack up` read it (Docker runs no check).
`events.jsonl`: what happened to each API (a replica replaced and why, a restart, a rollout rolled back,
an engine restart), appended by the controller and `stack up`, shown by `stack status`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stack.atomic import write_json_atomic

DESIRED_FILE = "desired.json"  # api -> {"version": ..., "replicas": n}
MANUAL_FILE = "manual.json"
DECISIONS_FILE = "decisions.json"
AFFINITY_FILE = "affinity.json"  # the controller's affinity APIs: each value's replicas, hit ratio (stack status)
RESTARTS_FILE = "restarts.json"  # container name -> times the controller started it again
KILLS_FILE = "kills.json"  # container name -> {"reason": ..., "at": unix time}
STARTS_FILE = "starts.json"  # container name -> Docker's StartedAt when the controller last saw it start
HEALTH_FILE = "health.json"  # container name -> ReplicaHealth
EVENTS_FILE = "events.jsonl"  # {"at", "api", "message"} per line
EVENTS_KEPT = 500  # the newest lines kept when the file is trimmed


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


def read_starts(state_dir: Path) -> dict[str, str]:
    return {k: v for k, v in _read_map(state_dir / STARTS_FILE).items() if isinstance(v, str)}


def write_starts(state_dir: Path, starts: dict[str, str]) -> None:
    write_json_atomic(state_dir / STARTS_FILE, starts)


@dataclass(frozen=True)
class ReplicaHealth:
    """A replica as the controller's probes last saw it."""

    id: str  # the container's id (12 characters)
    started: str  # its StartedAt: a record of an earlier start says nothing of this one
    health: str  # starting | healthy | not answering | stuck | unhealthy
    reason: str = ""
    keys: str = ""  # the generation of the API keys file it applies (serving.keys)


def read_health(state_dir: Path) -> dict[str, ReplicaHealth]:
    found = {}
    for name, item in _read_map(state_dir / HEALTH_FILE).items():
        if isinstance(item, dict):
            with contextlib.suppress(TypeError):
                found[name] = ReplicaHealth(**{k: str(v) for k, v in item.items()})
    return found


def write_health(state_dir: Path, health: dict[str, ReplicaHealth]) -> None:
    write_json_atomic(state_dir / HEALTH_FILE, {name: asdict(h) for name, h in sorted(health.items())})


def record_event(state_dir: Path, api: str, message: str, at: float | None = None) -> None:
    """Append one event; the controller and `stack up` both write, each line whole (O_APPEND, under a lock)."""
    line = json.dumps({"at": time.time() if at is None else at, "api": api, "message": message}) + "\n"
    path = state_dir / EVENTS_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if handle.tell():  # after a line torn by a writer that died mid-line, start a new one
            handle.seek(handle.tell() - 1)
            if handle.read(1) != "\n":
                line = "\n" + line
        handle.write(line)
        handle.flush()
        handle.seek(0)
        lines = handle.readlines()
        if len(lines) > 2 * EVENTS_KEPT:  # trimmed in place, under the lock
            handle.seek(0)
            handle.truncate()
            handle.writelines(lines[-EVENTS_KEPT:])
            handle.flush()
        os.fsync(handle.fileno())


def read_events(state_dir: Path, api: str, newest: int = 20) -> list[str]:
    """An API's newest events as `stack status` shows them: `HH:MM:SS message`."""
    try:
        lines = (state_dir / EVENTS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a torn line (a crash mid-write) is skipped, never fatal
        if isinstance(item, dict) and item.get("api") == api and isinstance(item.get("at"), (int, float)):
            found.append(f"{time.strftime('%H:%M:%S', time.localtime(item['at']))} {item.get('message', '')}")
    return found[-newest:]
