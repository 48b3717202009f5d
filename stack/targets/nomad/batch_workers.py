"""A BatchAPI job's workers on Nomad: one Nomad batch job per job, one task group per worker.

`stack up --nomad` writes each BatchAPI's worker template (the plan's `<project>-<api>-worker` job)
into the Nomad Variable `worker_variable(project, api)`. For a job the controller registers
`<project>-batch-<job>` from it, with a group per worker (the template's group, named after the
worker, its name and the job's token in its environment), re-registering the job with one more
group to start a worker; Nomad neither restarts nor reschedules them (the template says so): the
controller hands a dead worker's batch to another. The job is purged when the stack job ends.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from serving.batch import JOB_ID_ENV, JOB_TOKEN_ENV, JOB_WORKER_ENV
from stack.control.batch.jobs import JobRef, WorkerState
from stack.errors import StackError
from stack.targets.nomad.api import NomadApi

ALIVE = ("pending", "running")
ITEM = "job"


def worker_variable(project: str, api: str) -> str:
    """Under the controller's job path, so its own token reads it."""
    return f"nomad/jobs/{project}-autoscaler/batch/{api}"


class NomadWorkers:
    """The `WorkerPool` of the Nomad target."""

    def __init__(self, nomad: NomadApi, project: str) -> None:
        self.nomad = nomad
        self.project = project
        self.jobs: dict[str, dict[str, Any]] = {}  # stack job -> the Nomad job last registered for it

    def nomad_job_id(self, job_id: str) -> str:
        return f"{self.project}-batch-{job_id}"

    async def start(self, ref: JobRef) -> None:
        await asyncio.to_thread(self._start, ref)

    def _start(self, ref: JobRef) -> None:
        job = self.jobs.get(ref.job_id) or self._new_job(ref)
        alive = {g for g, state in self._workers(ref.job_id).items() if state.alive}
        template = job["Meta"]["stack_template_group"]
        groups = [g for g in job["TaskGroups"] if g["Name"] in alive]
        group = copy.deepcopy(json.loads(template))
        group["Name"] = ref.worker
        task = group["Tasks"][0]
        task["Env"] = {**(task.get("Env") or {}), JOB_ID_ENV: ref.job_id, JOB_TOKEN_ENV: ref.token}
        task["Env"][JOB_WORKER_ENV] = ref.worker
        job["TaskGroups"] = [*groups, group]
        self.nomad.register(job)
        self.jobs[ref.job_id] = job

    def _new_job(self, ref: JobRef) -> dict[str, Any]:
        items = self.nomad.get_variable(worker_variable(self.project, ref.api))
        if not items or ITEM not in items:
            raise StackError(f"BatchAPI {ref.api} has no worker template in Nomad: run `stack up --nomad`")
        template: dict[str, Any] = json.loads(items[ITEM])
        job = copy.deepcopy(template)
        job["ID"] = job["Name"] = self.nomad_job_id(ref.job_id)
        job["Meta"] = {**(job.get("Meta") or {}), "stack_job": ref.job_id, "stack_role": "batch-job"}
        job["Meta"]["stack_template_group"] = json.dumps(template["TaskGroups"][0], sort_keys=True)
        job["TaskGroups"] = []
        return job

    async def workers(self, job_id: str) -> dict[str, WorkerState]:
        return await asyncio.to_thread(self._workers, job_id)

    def _workers(self, job_id: str) -> dict[str, WorkerState]:
        states: dict[str, WorkerState] = {}
        if self.nomad.job(self.nomad_job_id(job_id)) is None:
            return states
        for alloc in sorted(self.nomad.allocations(self.nomad_job_id(job_id)), key=lambda a: a.get("CreateIndex", 0)):
            status = alloc.get("ClientStatus", "")
            events = [e for t in (alloc.get("TaskStates") or {}).values() for e in (t.get("Events") or [])]
            code = next((int(e["ExitCode"]) for e in reversed(events) if "ExitCode" in e), None)
            oom = any(e.get("Type") == "OOM Killed" or "OOM" in str(e.get("Details", {})) for e in events)
            if status in ALIVE:
                states[alloc["TaskGroup"]] = WorkerState(True)
            else:
                states[alloc["TaskGroup"]] = WorkerState(False, 0 if status == "complete" else (code or 1), oom)
        return states

    async def stop(self, job_id: str) -> None:
        await asyncio.to_thread(self._stop, job_id)

    def _stop(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.nomad.deregister(self.nomad_job_id(job_id), purge=True)  # also one a previous controller left
