"""Registering a stack's Nomad jobs and following their deployments.

A job whose content is unchanged (its `stack_job_digest` meta, counts left out) is not registered again:
no new version, no deployment. A changed one keeps the count the autoscaler or `stack scale` set. `stack
up` then follows the deployment Nomad starts until it is successful; a failed one (Nomad's auto_revert
rolls the job back) raises with the failing allocation's task events and last log lines.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from stack.errors import StackError, TargetError
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.scaler import GROUP

Progress = Callable[[str], None]
DEPLOY_MARGIN = 120.0  # seconds past the job's progress_deadline: Nomad fails the deployment first
POLL = 1.0  # seconds between reads of a deployment
TASK = "predictor"
OWNER_META = "stack_owner"  # HOST:DIRECTORY of the `stack up --nomad` that registered the job


def owner_of(job: dict[str, Any] | None) -> str:
    """Who registered a job of the stack (`stack_owner`); "" for a stopped job or one from before the field."""
    if job is None or job.get("Stop"):
        return ""
    return str((job.get("Meta") or {}).get(OWNER_META) or "")


class Deployments:
    def __init__(self, api: NomadApi, poll: float = POLL) -> None:
        self.api = api
        self.poll = poll

    def register(self, job: dict[str, Any], progress: Progress, owner: str = "") -> bool:
        """Register `job` unless Nomad already runs exactly it; True when a new version was submitted.
        `owner`: the host and directory registering it (its Meta `stack_owner`, see `owner_of`)."""
        current = self.api.job(job["ID"])
        job = copy.deepcopy(job)
        meta = job.setdefault("Meta", {})
        meta["stack_job_digest"] = _job_digest(job)
        if owner:
            meta[OWNER_META] = owner
        if current is not None and not current.get("Stop"):
            if (current.get("Meta") or {}).get("stack_job_digest") == meta["stack_job_digest"]:
                progress(f"{job['ID']}: unchanged")
                return False
            # Keep the count the autoscaler or `stack scale` set.
            counts = {g["Name"]: g.get("Count") for g in current.get("TaskGroups") or []}
            for group in job["TaskGroups"]:
                if counts.get(group["Name"]) is not None and group["Name"] == GROUP:
                    group["Count"] = counts[group["Name"]]
        progress(f"{job['ID']}: registering{' a new version' if current else ''}")
        self.api.register(job)
        return True

    def wait(self, api: str, job_id: str, progress_deadline: float, progress: Progress) -> None:
        """Follow the job's latest deployment until it succeeds; a failed one raises with its allocation's story.
        `progress_deadline`: the job's own (seconds); past it and a margin, Nomad has not decided: give up."""
        timeout = progress_deadline + DEPLOY_MARGIN
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            deployment = self.api.deployment(job_id)
            if deployment is None:
                time.sleep(self.poll)
                continue
            group = (deployment.get("TaskGroups") or {}).get(GROUP) or {}
            line = (
                f"{api}: deployment {deployment.get('Status')}, "
                f"{group.get('HealthyAllocs', 0)}/{group.get('DesiredTotal', 0)} healthy"
            )
            if line != last:
                progress(line)
                last = line
            status = deployment.get("Status")
            if status == "successful":
                return
            if status in ("failed", "cancelled"):
                raise TargetError(self._failure(api, job_id, deployment))
            if time.monotonic() > deadline:
                raise TargetError(f"{line} after {timeout:.0f}s; see `stack status --nomad {api}`")
            time.sleep(self.poll)

    def _failure(self, api: str, job_id: str, deployment: dict[str, Any]) -> str:
        """The failing allocation's task events and last log lines, for the error of `up`."""
        allocations = [a for a in self.api.allocations(job_id) if a.get("JobVersion") == deployment.get("JobVersion")]
        failing = next(
            (a for a in allocations if a.get("ClientStatus") == "failed" or _unhealthy(a)),
            allocations[0] if allocations else None,
        )
        text = (
            f"the deployment of API {api} failed ({deployment.get('StatusDescription') or 'no reason given'}); "
            "Nomad's auto_revert rolls the job back to its last healthy version."
        )
        if failing is None:
            return text
        events = [
            f"  {e.get('Type')}: {e.get('DisplayMessage') or e.get('Message') or ''}".rstrip(": ")
            for state in (failing.get("TaskStates") or {}).values()
            for e in (state.get("Events") or [])[-6:]
        ]
        try:
            lines = list(self.api.logs(failing["ID"], TASK, "stderr", follow=False))[-15:]
        except StackError as exc:
            lines = [f"(logs unavailable: {exc})"]
        return (
            f"{text}\nallocation {failing['ID'][:8]} on node {failing.get('NodeName') or '?'}, task events:\n"
            + "\n".join(events or ["  (none)"])
            + "\nits last log lines:\n"
            + "\n".join(lines or ["(empty)"])
        )


def _job_digest(job: dict[str, Any]) -> str:
    """What the job is, without the counts (the autoscaler changes them) and our own digest."""
    body = copy.deepcopy(job)
    body.get("Meta", {}).pop("stack_job_digest", None)
    body.get("Meta", {}).pop(OWNER_META, None)
    for group in body.get("TaskGroups") or []:
        group.pop("Count", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _unhealthy(alloc: dict[str, Any]) -> bool:
    return (alloc.get("DeploymentStatus") or {}).get("Healthy") is False
