"""`stack status` on Compose: what the engine runs and what the controller's state files say of it, as
the one `StackStatus` every target gives (stack.status: the same phases on every target)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from serving.exit_reason import read_exit_reason
from stack.control.canary import splitter_status
from stack.plan.gpus import Placement, Slot, read_placement
from stack.plan.versions import current_versions
from stack.spec import LoadedSpec
from stack.splits import splitters_of
from stack.status import AffinityStatus, ApiStatus, AutoscalerStatus, Observed, ReplicaStatus, StackStatus, api_phase
from stack.targets import images
from stack.targets.compose.components import components, last_kill, restarts
from stack.targets.compose.desired import (
    AFFINITY_FILE,
    DECISIONS_FILE,
    Kill,
    manual_apis,
    read_desired,
    read_events,
    read_kills,
    read_restarts,
)
from stack.targets.compose.engine import ComposeProject, Container
from stack.targets.compose.plan import EXITS_DIR
from stack.targets.compose.rollout import PLACEMENT_FILE, read_deployed
from stack.targets.gateway import check_routed
from stack.traffic import call_graph, gpu_status, prometheus_traffic, replica_gpu_memory


def observe(loaded: LoadedSpec, engine: ComposeProject, state_dir: Path) -> StackStatus:
    """What runs, as `stack status` shows it: each API's phase, replicas, restarts, events, traffic and GPUs,
    read from the engine and from the controller's state files (never from its logs)."""
    containers = engine.containers()
    plan_dir = engine.plan_dir
    on_disk = current_versions(loaded)  # what the files would build now
    decisions = _decisions(state_dir)
    affinity = _decisions(state_dir, AFFINITY_FILE)
    manual = manual_apis(state_dir)
    deployed = read_deployed(loaded.root)
    placement = read_placement(loaded.root / PLACEMENT_FILE)
    prometheus = f"http://127.0.0.1:{loaded.spec.prometheus.port}"
    restarted, kills = read_restarts(state_dir), read_kills(state_dir)
    apis = []
    for api in loaded.spec.apis:
        mine = [c for c in containers if c.api == api.name]
        alive = [c for c in mine if c.state not in ("exited", "dead")]
        versions = sorted({c.version for c in alive})
        version = deployed.get(api.name) or (versions[0] if len(versions) == 1 else "")
        current = [c for c in alive if c.version == version]
        ready = [c for c in alive if c.ready]
        updating = any(c.version != version for c in alive)
        failed = [c for c in current if c.failed]
        desired = max(len(current), len(alive) - len(current)) if updating else len(current)
        slots = placement.of(api.name)
        memory = replica_gpu_memory(prometheus, api.name) if slots else {}
        events = read_events(state_dir, api.name)
        seen = Observed(
            desired=desired,
            ready=len(ready),
            alive=len(alive),
            failing=bool(failed),
            updating=updating,
            deployed=bool(alive) or _desired_count(state_dir, api.name) == 0,  # at zero one is kept, stopped
        )
        apis.append(
            ApiStatus(
                name=api.name,
                status=api_phase(seen),
                ready=len(ready),
                desired=desired,
                endpoint=api.endpoint,
                version=version,
                changed=bool(version) and version != on_disk[api.name],
                error=_failure(failed[0], plan_dir / EXITS_DIR) if failed else last_kill(mine, kills),
                restarts=sum(restarts(c, restarted) for c in mine),
                events=events,
                autoscaled=api.autoscaled and api.name not in manual,
                autoscaler=AutoscalerStatus.from_dict(decisions.get(api.name)),
                affinity=AffinityStatus.from_dict(affinity.get(api.name)) if api.networking.affinity else None,
                min_replicas=api.autoscaling.min_replicas,
                max_replicas=api.autoscaling.max_replicas,
                replicas=[
                    ReplicaStatus(
                        id=c.name,
                        state=c.replica_state,
                        version=c.version,
                        health=c.health,
                        gpu=_slot_gpu(c.service, slots, placement),
                        gpu_memory_bytes=memory.get(c.name),
                        restarts=restarts(c, restarted),
                        last_event=_last_event(c, kills, events),
                    )
                    for c in mine
                ],
                traffic=prometheus_traffic(prometheus, api.name),
                gpu_slots=len(slots),
            )
        )
    kept = components(containers, restarted) if containers else []
    down = next((f"{c.detail}: {c.problem}" for c in kept if c.name == "gateway" and not c.running), "")
    check_port = engine.check_port()
    apis = [check_routed(api, check_port, down) for api in apis]
    notes = engine.controller_notes() if containers else []
    splitters = splitter_status(splitters_of(loaded.spec), state_dir)
    gpus = gpu_status(placement, prometheus)
    port = loaded.spec.gateway.port
    calls = call_graph(loaded.spec, prometheus)
    use = images.disk_use(loaded.spec.project, [a.name for a in loaded.spec.every_api], loaded.spec.build.base_image)
    return StackStatus(
        loaded.spec.project,
        "compose",
        port,
        apis,
        notes,
        splitters=splitters,
        gpus=gpus,
        components=kept,
        calls=calls,
        images=use.count if use else None,
        images_bytes=use.bytes if use else None,
    )


def _desired_count(state_dir: Path, api: str) -> int | None:
    wanted = read_desired(state_dir).get(api)
    return None if wanted is None else wanted.replicas


def _decisions(state_dir: Path, name: str = DECISIONS_FILE) -> dict[str, Any]:
    """The autoscaler's last decisions per API (or the affinity APIs' status), as the controller saved them
    in the shared state directory."""
    try:
        data = json.loads((state_dir / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _slot_gpu(service: str, slots: list[Slot], placement: Placement) -> str:
    """The GPU(s) of the slot a replica's Compose service (`<api>-<version>-gpu<N>`) stands for."""
    match = re.search(r"-gpu(\d+)$", service)
    slot = next((s for s in slots if match and s.number == int(match.group(1))), None)
    return ",".join(placement.device_ids(slot)) if slot is not None else ""


def _failure(container: Container, exits: Path) -> str:
    if container.health in ("stuck", "unhealthy", "not answering") and container.state == "running":
        return f"replica {container.name} is {container.health}" + (f": {container.reason}" if container.reason else "")
    stopped = f"replica {container.name} is {container.state} (exit code {container.exit_code})"
    said = exit_reason(container, exits)
    return f"{stopped}: {said}" if said else stopped


def exit_reason(container: Container, exits: Path) -> str | None:
    """What the replica wrote of why it could not start (serving.exit_reason), the same words local shows."""
    return read_exit_reason(exits / f"{container.id[:12]}.json")


def _last_event(container: Container, kills: dict[str, Kill], events: list[str]) -> str:
    """What last happened to a replica: a kill for memory, else its newest event."""
    if container.name in kills:
        return kills[container.name].reason
    mine = [e for e in events if f"replica {container.name} " in e]
    return mine[-1].split(" ", 1)[1] if mine else ""
