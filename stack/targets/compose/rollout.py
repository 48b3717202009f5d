"""A rolling update on Compose, driven by `stack up`, and its rollback.

Compose recreates all of a service's containers at once, so each version of an API is its own Compose
service (`<api>-<version>`); the versions share their routes, so the gateway balances over both while the
new one grows, and old containers are stopped only once enough new ones serve, honouring `max_surge` /
`max_unavailable` (stack.targets.rollout's pure stepping). A rollout whose new replicas fail (a predictor
that cannot start, or one crashing three times) or are not all ready within `update.progress_deadline`
is rolled back: the new containers go, the old version is brought back to its count (copies of its own
containers: its image is kept), the controller keeps that count again, and `stack up` fails saying why,
with the new replica's last log lines.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from serving.exit_reason import read_exit_reason
from serving.runner import EXIT_STARTUP_FAILED
from stack.atomic import write_json_atomic
from stack.errors import StackError
from stack.plan.gpus import read_placement
from stack.spec import Api, LoadedSpec
from stack.spec.units import format_duration
from stack.targets.compose.desired import Desired, record_event, write_desired
from stack.targets.compose.engine import ComposeProject, Container
from stack.targets.compose.plan import EXITS_DIR
from stack.targets.compose.scaler import ComposeScaler
from stack.targets.docker import docker
from stack.targets.rollout import Fleet, next_step

Progress = Callable[[str], None]
DEPLOYED_FILE = ".stack/compose/deployed.json"  # API -> the version `stack up` last rolled it to
PLACEMENT_FILE = ".stack/compose/placement.json"  # where `stack up` placed the GPU APIs' slots


class Rollout:
    def __init__(self, loaded: LoadedSpec, engine: ComposeProject, state_dir: Path) -> None:
        self.loaded = loaded
        self.project = loaded.spec.project
        self.engine = engine
        self.state_dir = state_dir

    def deployed(self) -> dict[str, str]:
        """The version each API was last rolled to by `stack up` (not what the files would build now)."""
        return read_deployed(self.loaded.root)

    def run(self, api: Api, version: str, progress: Progress) -> None:
        """Bring API to `version` with max_surge / max_unavailable; untouched when already there. A rollout that
        fails (stack.targets.rollout.failure) is rolled back to the version it started from."""
        mine = [c for c in self.engine.containers() if c.api == api.name and c.state != "exited"]
        old = [c for c in mine if c.version != version]
        current = [c for c in mine if c.version == version]
        # Keep the count the autoscaler or `stack scale` chose; a first start uses init_replicas.
        desired = len(old) if old else (len(current) or api.autoscaling.initial)
        desired = min(max(desired, api.autoscaling.min_replicas), api.autoscaling.max_replicas)
        deployed = self.deployed()
        previous = deployed.get(api.name)
        if not any(c.version == previous for c in old):  # what the old replicas run, most of them
            previous = max({c.version for c in old}, key=[c.version for c in old].count) if old else None
        if deployed.get(api.name) != version:
            write_json_atomic(self.loaded.root / DEPLOYED_FILE, {**deployed, api.name: version})
        # While the update runs, the controller keeps no count for this API: the steps below do.
        write_desired(self.state_dir, api.name, None)
        if old:
            progress(f"{api.name}: rolling update to {version} ({len(old)} old replica(s))")
        surge, unavailable = api.update.resolve(desired)
        started = time.monotonic()
        last = ""
        while True:
            alive = [c for c in self.engine.containers() if c.api == api.name and c.state not in ("exited", "dead")]
            new = [c for c in alive if c.version == version]
            old = [c for c in alive if c.version != version]
            fleet = Fleet(
                new_ready=sum(c.ready for c in new),
                new_starting=sum(not c.ready for c in new),
                old_ready=sum(c.ready for c in old),
                old_starting=sum(not c.ready for c in old),
            )
            failing = next((c for c in new if _failing(c)), None)
            waited = time.monotonic() - started
            if failing is not None or waited > api.update.progress_deadline:
                self._fail_rollout(api, version, previous, desired, failing, fleet, progress)
            line = f"{api.name}: {fleet.new_ready}/{desired} replicas ready"
            if line != last:
                progress(line)
                last = line
            step = next_step(fleet, desired, surge, unavailable)
            if step.done:
                break
            if step.start or step.stop_new:
                self.engine.scale_to(api, version, len(new) + step.start - step.stop_new)
            retiring = sorted(old, key=lambda c: c.ready)[: step.stop_old]  # not-ready ones first
            for container in retiring:
                progress(f"{api.name}: stopping old replica {container.name}")
                docker("stop", "-t", str(int(stop_timeout(api))), container.id)
                docker("rm", container.id)
            if step.idle:
                self.engine.raise_if_torn_down()
                time.sleep(1)
        write_desired(self.state_dir, api.name, Desired(version, desired))
        if old:
            progress(f"{api.name}: rolling update done")
            record_event(self.state_dir, api.name, f"rolled out version {version} ({desired} replicas)")

    def _fail_rollout(
        self,
        api: Api,
        version: str,
        previous: str | None,
        desired: int,
        failing: Container | None,
        fleet: Fleet,
        progress: Progress,
    ) -> None:
        """Raise why the rollout failed; with a version to go back to, roll back to it first."""
        if failing is not None:
            said = read_exit_reason(self.engine.plan_dir / EXITS_DIR / f"{failing.id[:12]}.json")
            reason = (
                f"replica {failing.name} failed to start (state {failing.state}, exit code {failing.exit_code}"
                f"{', ' + failing.reason if failing.reason else ''})" + (f": {said}" if said else "")
            )
            culprit: str | None = failing.id
        else:
            deadline = format_duration(api.update.progress_deadline)
            reason = (
                f"the new version was not ready within {deadline} (update.progress_deadline): "
                f"{fleet.new_ready}/{desired} replicas ready"
            )
            culprit = next((c.id for c in self.engine.containers() if c.api == api.name and c.version == version), None)
        logs = _last_lines(culprit) if culprit else "(no replica of the new version started)"
        if previous is None:  # a first deployment: nothing to go back to
            raise StackError(f"API {api.name}: {reason}; its last log lines:\n{logs}")
        progress(f"{api.name}: rolling back to {previous}: {reason}")
        self._roll_back(api, version, previous, desired)
        record_event(self.state_dir, api.name, f"rolled back from version {version} to {previous}: {reason}")
        raise StackError(
            f"API {api.name}: rolled back: {reason}\n(it serves its previous version {previous} again, "
            f"{desired} replica(s); fix the cause and `stack up` again)\nlast log lines of the new replica:\n{logs}"
        )

    def _roll_back(self, api: Api, version: str, previous: str, desired: int) -> None:
        """The new version's containers go; the previous one is brought back to `desired` and kept there."""
        for container in [c for c in self.engine.containers() if c.api == api.name and c.version == version]:
            docker("rm", "-f", container.id, check=False)
        scaler = ComposeScaler(self.project, state_dir=self.state_dir)
        placement = read_placement(self.loaded.root / PLACEMENT_FILE)
        slots = placement.slot_devices().get(api.name, [])
        alive = [
            c
            for c in scaler.client.containers.list(all=True, filters={"label": [f"stack.api={api.name}"]})
            if c.labels.get("com.docker.compose.project") == self.project
            and c.labels.get("stack.version") == previous
            and c.status in ("created", "running", "restarting")
        ]
        for _ in range(max(desired - len(alive), 0)):
            if not alive:
                break
            scaler.add(api.name, slots, alive)
        deployed = self.deployed()
        write_json_atomic(self.loaded.root / DEPLOYED_FILE, {**deployed, api.name: previous})
        write_desired(self.state_dir, api.name, Desired(previous, desired))


def read_deployed(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / DEPLOYED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _failing(container: Container) -> bool:
    """A new replica that will not come up by itself: its predictor cannot start (serving's exit code 3, at
    once), it crashed three times (Docker restarts it meanwhile), or the probes found it stuck or unhealthy."""
    if container.health in ("stuck", "unhealthy"):
        return True
    if container.state in ("exited", "dead"):
        return True
    if container.state == "restarting" or container.restarts:
        return container.exit_code == EXIT_STARTUP_FAILED or container.restarts >= 2
    return False


def _last_lines(container: str, lines: int = 20) -> str:
    logs = subprocess.run(["docker", "logs", "--tail", str(lines), container], capture_output=True, text=True)
    return (logs.stdout + logs.stderr).strip() or "(no log lines)"


def stop_timeout(api: Api) -> float:
    return api.predictor.drain_delay + api.predictor.grace_period + 5
