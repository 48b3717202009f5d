"""The local target as the CLI sees it: start or update the supervisor, and talk to it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from stack.control.autoscale.scaler import Scaler
from stack.control.canary import splitter_status
from stack.errors import NotRunning, StackError
from stack.plan.gpus import host_gpus, place, read_placement, write_placement
from stack.plan.serving import keys_removed
from stack.plan.versions import current_versions
from stack.spec import LoadedSpec
from stack.splits import change, clear_overrides, splitters_of
from stack.status import ApiPhase, StackStatus
from stack.targets.base import refuse_nomad_autoscaler
from stack.targets.gateway import check_routed, wait_for_batch_apis
from stack.targets.local import control
from stack.targets.local.apis import BACKOFF, ERROR_AFTER
from stack.targets.local.launch import start_supervisor, started_here, stop_supervisor, tail
from stack.targets.local.names import claimed, release
from stack.targets.local.preflight import check_installed
from stack.targets.local.state import (
    LocalPaths,
    LocalState,
    StackDied,
    StateUnreadable,
    find_supervisor,
    forget,
    read_state,
)
from stack.targets.logs import lines_since
from stack.traffic import call_graph, gpu_status, prometheus_traffic, replica_gpu_memory

READY_TIMEOUT = 600.0  # seconds `stack up --local` waits for replicas (model loads can be slow)
Progress = Callable[[str], None]


def open_target(
    loaded: LoadedSpec, gpus: int | None = None, gpu_mem: int | None = None, registry: str | None = None
) -> LocalTarget:
    """`gpus`/`gpu_mem`: this host's GPUs as `--gpus N --gpu-mem SIZE` gave them (None: ask nvidia-smi)."""
    return LocalTarget(loaded, host_gpus=gpus, gpu_mem=gpu_mem)


class LocalTarget:
    name = "local"

    def __init__(self, loaded: LoadedSpec, host_gpus: int | None = None, gpu_mem: int | None = None) -> None:
        self.loaded = loaded
        self.paths = LocalPaths(loaded.root, loaded.path.name)
        self.host_gpus = host_gpus  # None: ask nvidia-smi
        self.gpu_mem = gpu_mem

    # -- talking to a running supervisor -------------------------------------------

    def state(self) -> LocalState | None:
        """The running stack's state; raises StackDied or StateUnreadable rather than guess."""
        return read_state(self.paths)

    def running(self) -> bool:
        try:
            return self.state() is not None
        except StackError:
            return False

    def _require(self) -> LocalState:
        state = self.state()
        if state is None:
            raise NotRunning(f"no local stack is running for {self.loaded.path}; start it with `stack up --local`")
        return state

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        return control.call(self._require().control_socket, method, path, body, timeout)

    def _supervisor_status(self) -> StackStatus:
        """What the supervisor reports: its StackStatus, sent whole over the control socket."""
        return StackStatus.from_dict(self._call("GET", "/status"))

    def status(self) -> StackStatus:
        reported = self._supervisor_status()
        state = self._require()
        prometheus = state.prometheus_url
        versions = current_versions(self.loaded)  # what the files would build now
        placement = read_placement(self.paths.placement)
        apis = []
        down = next((f"{c.detail}: {c.problem}" for c in reported.missing() if c.name == "gateway"), "")
        for api in reported.apis:
            traffic = prometheus_traffic(prometheus, api.name) if prometheus else None
            checked = check_routed(api, state.check_port, down)
            if api.gpu_slots and prometheus:
                memory = replica_gpu_memory(prometheus, api.name)
                replicas = [replace(r, gpu_memory_bytes=memory.get(f"127.0.0.1:{r.port}")) for r in checked.replicas]
                checked = replace(checked, replicas=replicas)
            apis.append(replace(checked, changed=versions.get(api.name, api.version) != api.version, traffic=traffic))
        splitters = splitter_status(splitters_of(self.loaded.spec), self.paths.split_overrides)
        gpus = gpu_status(placement, prometheus)
        calls = call_graph(self.loaded.spec, prometheus)
        return replace(reported, apis=apis, splitters=splitters, gpus=gpus, calls=calls)

    def prometheus_url(self) -> str:
        url = self._require().prometheus_url
        if not url:
            raise StackError("this stack runs without Prometheus (prometheus.enabled: false): nothing was counted")
        return url

    def dashboard_url(self) -> str:
        state = self._require()
        if not state.control_port:
            raise StackError("this supervisor predates the dashboard: `stack down --local`, then `stack up --local`")
        return f"http://127.0.0.1:{state.control_port}/dashboard/"

    def split(self, splitter: str, weights: dict[str, int]) -> None:
        self._require()
        routes_file = self.paths.traefik_dir / "routes.yml"
        spec = self.loaded.spec
        change(self.paths.split_overrides, routes_file, spec.project, splitters_of(spec), splitter, weights)

    def scale(self, api: str, replicas: int, force: bool, progress: Progress) -> None:
        self._call("POST", "/scale", {"api": api, "replicas": replicas, "force": force})
        progress(f"scaling {api} to {replicas}")
        self.wait_ready(progress)

    # -- up / down ----------------------------------------------------------------------

    def up(self, progress: Progress) -> StackStatus:
        refuse_nomad_autoscaler(self.loaded, "local")
        check_installed(self.loaded)
        # The GPU APIs' slots are placed before anything starts (an over-commit stops here); the
        # supervisor pins each replica to its slot's GPU from this file.
        placement = place(self.loaded.spec.apis, host_gpus(self.host_gpus, self.gpu_mem))
        write_placement(self.paths.placement, placement)
        for line in placement.lines() if placement.slots else []:
            progress(f"GPU placement: {line}")
        for note in placement.warnings:
            progress(f"note: {note}")
        try:
            running = self.state()
        except StackDied as died:
            progress(f"note: {died}; starting it afresh")
            forget(self.paths)
            running = None
        except StateUnreadable as unreadable:
            if unreadable.supervisor_pid is not None:
                raise StackError(f"{unreadable}; then `stack up --local` again") from None
            forget(self.paths)
            running = None
        clear_overrides(self.paths.split_overrides)  # `stack up` re-applies stack.yaml's weights
        if running is not None:
            progress("a local stack is running: updating it")
            with contextlib.suppress(OSError):
                opened = keys_removed(self.paths.api_keys.read_text(), self.loaded)
                if opened:
                    progress(opened)
            # `${VAR}` in stack.yaml is this command's environment, not the supervisor's (started long ago).
            environment = {name: os.environ[name] for name in self.loaded.secret_env if name in os.environ}
            reloaded = self._call("POST", "/reload", {"environment": environment}, timeout=120)
            for replica in reloaded.get("keys_pending") or []:
                progress(f"warning: replica {replica} did not confirm the new API keys yet")
        else:
            self._start(progress)
        self.wait_ready(progress)
        wait_for_batch_apis([a.endpoint for a in self.loaded.spec.batch_apis], self._require().check_port)
        status = self.status()
        for note in status.notes:
            progress(f"note: {note}")
        return status

    def _start(self, progress: Progress) -> None:
        # Under the project name's lock: a copy of this project starting at the same moment waits, then
        # finds this one running and is refused (stack.targets.local.names).
        with claimed(self.loaded.spec.project, self.loaded.root) as claim:
            pid = start_supervisor(self.loaded, self.paths, progress, self._started)
            claim.record(pid)

    def _started(self) -> bool:
        try:
            return self.state() is not None
        except StateUnreadable:  # its pid file is written just before its state file
            return False

    def wait_ready(self, progress: Progress, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            status = self._supervisor_status()
            line = ", ".join(f"{a.name} {a.ready}/{a.desired} {a.status}" for a in status.apis)
            if line != last:
                progress(line)
                last = line
            # A rollout that failed was rolled back: the API serves its old version, and `stack up` failed.
            rolled = [a for a in status.apis if a.rolled_back]
            if rolled:
                api = rolled[0]
                logs = tail(self.paths.replica_log(api.error_replica)) if api.error_replica else "(no replica log)"
                raise StackError(
                    f"API {api.name}: rolled back: {api.rolled_back}\n(it serves its previous version "
                    f"{api.version} again; fix the cause and `stack up` again)\n"
                    f"last log lines of {api.error_replica or 'the new replica'}:\n{logs}"
                )
            # An API in error, or one of its slots failed to start ERROR_AFTER times in a row (it names the
            # replica) while others serve: retries before that are waited out.
            failed = [
                a
                for a in status.apis
                if a.status == ApiPhase.ERROR or (a.error_replica and not a.status.settled and a.error)
            ]
            if failed:
                api = failed[0]
                logs = tail(self.paths.replica_log(api.error_replica or f"{api.name}-1"))
                raise StackError(
                    f"API {api.name} cannot start: {api.error}\n"
                    f"(a replica failed to start {ERROR_AFTER} times in a row; the supervisor keeps retrying it every "
                    f"{BACKOFF[-1]}s: `stack status` shows when it serves, `stack down --local` stops it)\n"
                    f"last log lines:\n{logs}"
                )
            if all(a.status.settled for a in status.apis):
                return
            if time.monotonic() > deadline:
                raise StackError(f"replicas not ready after {timeout:.0f}s: {line}")
            time.sleep(0.2)

    def down(self, volumes: bool = False, timeout: float = 120) -> bool:
        try:
            state = self.state()
        except StackDied:
            forget(self.paths)  # nothing of it runs any more (its children die with the supervisor)
            return False
        except StateUnreadable as unreadable:
            if unreadable.supervisor_pid is None:
                forget(self.paths)
                return False
            # Found through its pid file or its command line (a `stack up` interrupted at its very start, before
            # the supervisor wrote its state): stopped with whatever it had started.
            stop_supervisor(unreadable.supervisor_pid, timeout, group=True)
            forget(self.paths)
            release(self.loaded.spec.project, self.loaded.root)
            return True
        if state is None:
            return False
        try:
            self._call("POST", "/shutdown")
        except StackError:
            os.kill(state.pid, signal.SIGTERM)
        stop_supervisor(state.pid, timeout, signalled=True)
        release(self.loaded.spec.project, self.loaded.root)
        return True

    def remove_images(self) -> str:
        return "the local target builds no images (its replicas run the project's files)"

    def image_note(self) -> str:
        return ""

    def left_running(self) -> str:
        pid = find_supervisor(self.paths.spec_file) or started_here(self.paths.spec_file)
        if pid is None:
            return "nothing of the stack was started"
        root = self.loaded.root
        return (
            f"the supervisor (pid {pid}) goes on starting the stack in the background: "
            f"`stack status --local -p {root}` shows it, `stack down --local {root}` stops it"
        )

    def scaler(self) -> Scaler:
        from stack.targets.local.scaler import SupervisorScaler

        return SupervisorScaler(self._require().control_socket)

    # -- logs ---------------------------------------------------------------------------

    def log_files(self, api: str) -> list[Path]:
        return sorted(
            (p for p in self.paths.logs.glob(f"{api}-*.log") if p.stem.rsplit("-", 1)[1].isdigit()),
            key=lambda p: int(p.stem.rsplit("-", 1)[1]),
        )

    def logs(self, api: str, follow: bool, since: float | None = None) -> Iterator[str]:
        self.loaded.spec.api(api)  # UnknownApi names the ones it has
        if not self.log_files(api):
            raise NotRunning(f"API {api!r} has no replica logs under {self.paths.logs}; is the stack up?")
        cutoff = time.time() - since if since is not None else None
        offsets: dict[Path, int] = {}
        while True:
            for path in self.log_files(api):
                with open(path, errors="replace") as handle:
                    handle.seek(offsets.get(path, 0))
                    # Once read, a file's new lines are new: the window applies to what was there.
                    window = cutoff if path not in offsets else None
                    for line in lines_since((raw.rstrip() for raw in handle), window):
                        yield f"{path.stem} | {line}"
                    offsets[path] = handle.tell()
            if not follow:
                return
            time.sleep(0.3)
