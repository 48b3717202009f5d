"""A BatchAPI job's workers on Compose: containers the controller copies from the API's template.

`stack up` creates each BatchAPI's service container and never starts it (the template: the API's
image, environment, limits, GPUs, user, dropped capabilities, network, Compose's labels). A worker is
a copy with the job's URL, token and worker name added, `restart: no` (the controller decides), and
the labels `stack.job` and `stack.worker`; `stack down` removes workers with the project.
"""

from __future__ import annotations

import asyncio
from typing import Any

import docker

from serving.batch import JOB_TOKEN_ENV, JOB_URL_ENV, JOB_WORKER_ENV
from stack.control.batch.jobs import WORK, JobRef, WorkerState
from stack.targets.compose.scaler import COPIED_CONFIG, PROJECT_LABEL

ALIVE = ("created", "running", "restarting", "paused")
STOP_TIMEOUT = 10


class ComposeWorkers:
    """The `WorkerPool` of the Compose target (blocking Docker calls run in a worker thread)."""

    def __init__(self, project: str, controller_url: str, client: docker.DockerClient | None = None) -> None:
        self.project = project
        self.controller_url = controller_url  # the controller as the workers reach it on the stack network
        self.client = client or docker.from_env()

    async def start(self, ref: JobRef) -> None:
        await asyncio.to_thread(self._start, ref)

    def _start(self, ref: JobRef) -> None:
        found = self.client.containers.list(
            all=True,
            ignore_removed=True,
            filters={"label": [f"{PROJECT_LABEL}={self.project}", f"stack.batch={ref.api}"]},
        )
        templates = [c for c in found if "stack.job" not in c.labels]
        if not templates:
            raise RuntimeError(f"BatchAPI {ref.api} has no worker template: run `stack up`")
        template = max(templates, key=lambda c: c.attrs.get("Created", ""))
        attrs = template.attrs
        config: dict[str, Any] = {k: attrs["Config"][k] for k in COPIED_CONFIG if attrs["Config"].get(k) is not None}
        config["Env"] = [
            *(config.get("Env") or []),
            f"{JOB_URL_ENV}={self.controller_url}{WORK}/{ref.job_id}",
            f"{JOB_TOKEN_ENV}={ref.token}",
            f"{JOB_WORKER_ENV}={ref.worker}",
        ]
        config["Labels"] = {**config["Labels"], "stack.job": ref.job_id, "stack.worker": ref.worker}
        host = dict(attrs["HostConfig"])
        host["RestartPolicy"] = {"Name": "no"}
        config["HostConfig"] = host
        config["NetworkingConfig"] = {"EndpointsConfig": {n: {} for n in attrs["NetworkSettings"]["Networks"]}}
        name = f"{self.project}-{ref.api}-{ref.job_id}-{ref.worker}"
        created = self.client.api.create_container_from_config(config, name)
        self.client.api.start(created["Id"])

    async def workers(self, job_id: str) -> dict[str, WorkerState]:
        return await asyncio.to_thread(self._workers, job_id)

    def _workers(self, job_id: str) -> dict[str, WorkerState]:
        found = self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": [f"{PROJECT_LABEL}={self.project}", f"stack.job={job_id}"]}
        )
        states = {}
        for container in found:
            state = container.attrs["State"]
            alive = container.status in ALIVE
            code = None if alive else int(state.get("ExitCode", 0))
            states[container.labels.get("stack.worker", container.name)] = WorkerState(
                alive, code, bool(state.get("OOMKilled"))
            )
        return states

    async def stop(self, job_id: str) -> None:
        await asyncio.to_thread(self._stop, job_id)

    def _stop(self, job_id: str) -> None:
        found = self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": [f"{PROJECT_LABEL}={self.project}", f"stack.job={job_id}"]}
        )
        for container in found:
            try:
                if container.status in ALIVE:
                    container.stop(timeout=STOP_TIMEOUT)  # SIGTERM first: the batch in hand may finish
                container.remove(force=True)
            except docker.errors.NotFound:
                pass  # gone already (`stack down`, or removed by hand)
