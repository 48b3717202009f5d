"""Scaling a Nomad job's task group through the job scale endpoint.

python-nomad has no scale call, so this uses its raw request helper against
`/v1/job/<job>/scale` (GET for counts, POST to change one). Nomad answers 400
while a deployment of the job is active: that is a retry, not a failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nomad
from nomad.api import exceptions

from stack.control.autoscale.config import ApiScaling
from stack.control.autoscale.scaler import Replicas, ScalerBusy

GROUP = "predictor"  # the task group every API job has (templates/nomad/api.nomad.hcl.j2)
# The `source` of a scaling event set by `stack scale --force`: the autoscaler leaves the job
# alone while that is the newest event, until `stack up --nomad` hands the API back.
MANUAL_SOURCE = "stack scale --force"
HANDED_BACK = "stack up"


class NomadScaler:
    def __init__(self, project: str, client: nomad.Nomad) -> None:
        self.project = project
        self.client = client

    def job_id(self, api: ApiScaling) -> str:
        return f"{self.project}-{api.name}"

    async def replicas(self, api: ApiScaling) -> Replicas:
        status = await asyncio.to_thread(self._get, api)
        group = status.get("TaskGroups", {}).get(GROUP)
        if group is None:
            raise RuntimeError(f"Nomad job {self.job_id(api)} has no task group {GROUP!r}")
        desired, healthy = int(group.get("Desired") or 0), int(group.get("Healthy") or 0)
        if status.get("JobStopped"):
            return Replicas(0, 0, f"Nomad job {self.job_id(api)} is stopped")
        if latest_source(group) == MANUAL_SOURCE:
            return Replicas(desired, healthy, "set by hand with `stack scale --force`, until the next `stack up`")
        return Replicas(desired, healthy)

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None:
        await asyncio.to_thread(self._post, api, count, reason)

    def _get(self, api: ApiScaling) -> dict[str, Any]:
        result: dict[str, Any] = self.client.job.request(self.job_id(api), "scale", method="get").json()
        return result

    def _post(self, api: ApiScaling, count: int, reason: str) -> None:
        body = {
            "Count": count,
            "Target": {"Group": GROUP},
            "Message": reason[:300],
            "Meta": {"source": "stack autoscale"},
        }
        try:
            self.client.job.request(self.job_id(api), "scale", method="post", json=body)
        except exceptions.BadRequestNomadException as exc:
            raise ScalerBusy(f"Nomad refused the new count (an active deployment?): {_text(exc)}") from exc


def latest_source(group: dict[str, Any]) -> str:
    """The `source` meta of a task group's newest scaling event ("" without events)."""
    events = group.get("Events") or []
    if not events:
        return ""
    newest = max(events, key=lambda e: (e.get("Time") or 0, e.get("CreateIndex") or 0))
    return str((newest.get("Meta") or {}).get("source", ""))


def _text(exc: exceptions.BaseNomadException) -> str:
    response = getattr(exc, "nomad_resp", None)
    return getattr(response, "text", str(exc)).strip()[:300]
