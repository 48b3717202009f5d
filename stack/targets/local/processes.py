"""The local target's replica processes: how one starts (its environment, its GPUs, where it says why it
stopped), how one leaves (out of the gateway first, SIGTERM once Traefik confirms; killed at once when
stuck or over its memory), and what an exited one is reaped as (a start-up failure or a crash, with its
reason).

The fleet (stack.targets.local.fleet) decides how many of each version run; this module is how they run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

from serving.config import CONFIG_ENV
from serving.exit_reason import STARTUP_ERROR_ENV, read_exit_reason
from serving.health import EXIT_STUCK
from serving.logs import REPLICA_ENV
from stack.plan.serving import host_model_cache, needs_model_cache, replica_config, tracing_config
from stack.routes import UPSTREAMS_FILE
from stack.spec import LoadedSpec
from stack.spec.units import format_memory
from stack.targets.local import memory
from stack.targets.local.apis import DRAINING, READY, STARTING, ApiState, Replica
from stack.targets.local.children import free_port, start_child, wait_or_kill
from stack.targets.local.router import LocalRouter
from stack.targets.local.state import LocalPaths

LOGGER = logging.getLogger("stack.targets.local")
STOP_MARGIN = 5.0  # seconds past an API's grace period before a replica that ignores SIGTERM is killed


class ReplicaProcesses:
    """Starts, drains, kills and reaps the replica processes of every API; `wake` is set when one exits."""

    def __init__(self, paths: LocalPaths, router: LocalRouter, wake: asyncio.Event, leases_url: str = "") -> None:
        self.paths = paths
        self.leases_url = leases_url  # the controller's gateway-facing app: named keys' leases are released there
        self.router = router
        self.wake = wake
        self.tasks: set[asyncio.Task[None]] = set()  # drains and exit watchers: kept, awaited at exit
        self.killed: dict[str, str] = {}  # replica -> why it was killed (over compute.mem)

    def error_file(self, replica_id: str) -> Path:
        return self.paths.logs / f"{replica_id}.error.json"

    async def start(self, loaded: LoadedSpec, state: ApiState, slot: int) -> None:
        state.counter += 1
        replica_id = f"{state.spec.name}-{state.counter}"
        port = free_port()
        log = self.paths.replica_log(replica_id)
        self.error_file(replica_id).unlink(missing_ok=True)
        gpu = ",".join(state.slots[slot]) if state.slots else ""
        env = replica_env(
            loaded, self.paths, state, replica_id, port, gpu, self.error_file(replica_id), self.leases_url
        )
        proc = await start_child([sys.executable, "-m", "serving"], log, env=env, cwd=loaded.root)
        state.replicas.append(Replica(replica_id, state.spec.name, state.version, port, proc, log, slot=slot, gpu=gpu))
        # Its exit wakes the reconcile loop at once: a dead replica leaves the router
        # within milliseconds instead of at the next tick.
        self._spawn(self._watch(proc))
        on = f", GPU {gpu}" if gpu else ""
        state.event(f"started replica {replica_id} (version {state.version}, port {port}{on})")

    def reap(self, state: ApiState) -> None:
        """Take the exited replicas out of `state`, each a start-up failure or a crash with its reason."""
        for replica in list(state.replicas):
            code = replica.proc.returncode
            if code is None:
                continue
            state.replicas.remove(replica)
            if replica.state == DRAINING:
                continue
            said = read_exit_reason(self.error_file(replica.id))  # why it stopped, when it could write it
            killed = self.killed.pop(replica.id, "")
            if code == EXIT_STUCK and not killed:  # it found itself stuck (serving.health) and left
                killed = f"{said or 'stuck'}; it exited (code {code})"
            if replica.state == STARTING:
                state.failed_to_start(replica, code, killed or said)
            else:
                state.exited(replica, code, killed)

    def drain(self, state: ApiState, replica: Replica, why: str) -> None:
        was_routed = replica.state == READY
        replica.state = DRAINING
        state.event(f"draining replica {replica.id}: {why}")
        # Out of the router first; SIGTERM only once Traefik confirms it is gone.
        self._spawn(self._terminate_when_unrouted(replica, was_routed))

    def kill(self, replica: Replica) -> None:
        """Out of the routes and killed now, its child processes too: it cannot answer anything more."""
        replica.state = DRAINING
        if replica.proc.returncode is None:
            memory.kill_tree(memory.process_tree(replica.proc.pid))

    def enforce_memory(self, apis: Iterable[ApiState]) -> None:
        """Kill a replica whose processes hold more than its compute.mem (stack.targets.local.memory)."""
        for state in apis:
            limit = state.spec.compute.mem
            for replica in state.replicas if limit else []:
                if replica.state == DRAINING or replica.proc.returncode is not None or replica.id in self.killed:
                    continue
                pids = memory.process_tree(replica.proc.pid)
                used = memory.resident_bytes(pids)
                if limit is None or used <= limit:
                    continue
                # The API's error says what Compose says of a kernel OOM kill; the event has the detail.
                state.last_kill = f"killed: out of memory (limit {format_memory(limit)})"
                why = f"killed: out of memory (limit {format_memory(limit)}, resident {format_memory(used)})"
                self.killed[replica.id] = why
                LOGGER.warning(f"{state.spec.name}: replica {replica.id} {why} at {time.strftime('%H:%M:%S')}")
                memory.kill_tree(pids)

    async def shutdown(self, apis: Iterable[ApiState]) -> None:
        """SIGTERM to every replica, killed past its API's grace period; the drains in flight finish."""
        states = list(apis)
        every = [r for a in states for r in a.replicas]
        for replica in every:
            if replica.proc.returncode is None:
                replica.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max((a.spec.predictor.grace_period + STOP_MARGIN for a in states), default=10)
        await asyncio.gather(*(wait_or_kill(r.proc, deadline) for r in every))
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.wake.set()

    async def _terminate_when_unrouted(self, replica: Replica, was_routed: bool) -> None:
        if was_routed:
            await self.router.wait_unrouted(replica.api, replica.url)
        if replica.proc.returncode is None:
            replica.proc.send_signal(signal.SIGTERM)


def replica_env(
    loaded: LoadedSpec,
    paths: LocalPaths,
    state: ApiState,
    replica_id: str,
    port: int,
    gpu: str,
    error_file: Path,
    leases_url: str = "",
) -> dict[str, str]:
    """A local replica's environment: its serving config, its name, where to say why it stopped, its GPUs."""
    cache = host_model_cache(loaded, state.spec) if needs_model_cache(state.spec) else None
    config = replica_config(
        loaded,
        state.spec,
        host="127.0.0.1",
        port=port,
        drain_delay=0.0,
        keys_file=str(paths.api_keys),
        model_cache=str(cache) if cache else None,  # one download per host, shared by every replica
        upstreams_file=str(paths.upstreams / UPSTREAMS_FILE),
        tracing=tracing_config(loaded, state.version),
        leases_url=leases_url or None,
    )
    env = {**os.environ, **state.spec.predictor.env, CONFIG_ENV: config.to_json(), REPLICA_ENV: replica_id}
    env[STARTUP_ERROR_ENV] = str(error_file)
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = gpu  # its slot's GPU(s), by UUID where nvidia-smi gave one
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for name in loaded.secret_env:  # the keys' variables: replicas read the keys file instead
        env.pop(name, None)
    return env
