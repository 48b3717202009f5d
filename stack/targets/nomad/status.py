"""`stack status` of a Nomad API: its job, allocations and deployment, seen as replicas and a phase."""

from __future__ import annotations

from stack.spec import Api
from stack.status import ApiStatus, Observed, ReplicaState, ReplicaStatus, api_phase
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.scaler import GROUP


def api_status(nomad: NomadApi, api: Api, job_id: str, on_disk: str) -> ApiStatus:
    job = nomad.job(job_id)
    base = dict(
        name=api.name,
        endpoint=api.endpoint,
        autoscaled=api.autoscaled,
        min_replicas=api.autoscaling.min_replicas,
        max_replicas=api.autoscaling.max_replicas,
    )
    if job is None or job.get("Stop"):
        stopped = api_phase(Observed(desired=0, ready=0, deployed=False))
        return ApiStatus(status=stopped, ready=0, desired=0, version="", **base)  # type: ignore[arg-type]
    version = (job.get("Meta") or {}).get("stack_version", "")
    desired = next((g.get("Count", 0) for g in job.get("TaskGroups") or [] if g["Name"] == GROUP), 0)
    allocations = [a for a in nomad.allocations(job_id) if a.get("DesiredStatus") == "run"]
    deployment = nomad.deployment(job_id)
    replicas = []
    ready = 0
    for alloc in sorted(allocations, key=lambda a: a.get("CreateIndex", 0)):
        healthy = bool((alloc.get("DeploymentStatus") or {}).get("Healthy"))
        running = alloc.get("ClientStatus") == "running"
        ready += healthy and running
        states = (alloc.get("TaskStates") or {}).values()
        events = [e for s in states for e in s.get("Events") or []]
        replicas.append(
            ReplicaStatus(
                id=alloc["ID"][:8],
                state=_replica_state(alloc.get("ClientStatus", ""), healthy and running),
                version=version if alloc.get("JobVersion") == job.get("Version") else f"v{alloc.get('JobVersion')}",
                health="healthy" if healthy else "unhealthy" if healthy is False and running else "",
                node=alloc.get("NodeName", ""),
                restarts=sum(int(s.get("Restarts") or 0) for s in states),
                last_event=(events[-1].get("DisplayMessage") or events[-1].get("Type", "")) if events else "",
            )
        )
    dep_status = (deployment or {}).get("Status", "")
    failed = [r for r in replicas if r.state == ReplicaState.FAILED]
    alive = [r for r in replicas if r.state not in (ReplicaState.EXITED, ReplicaState.FAILED)]
    seen = Observed(desired, ready, len(alive), failing=dep_status == "failed", updating=dep_status == "running")
    error = (deployment or {}).get("StatusDescription") if dep_status == "failed" else None
    return ApiStatus(
        status=api_phase(seen),
        ready=ready,
        desired=desired,
        version=version,
        changed=bool(version) and version != on_disk,
        error=error or (f"allocation {failed[0].id} failed: {failed[0].last_event}" if failed else None),
        restarts=sum(r.restarts for r in replicas),
        replicas=replicas,
        events=[f"deployment {dep_status}: {(deployment or {}).get('StatusDescription', '')}"] if deployment else [],
        **base,  # type: ignore[arg-type]
    )


def _replica_state(client_status: str, ready: bool) -> ReplicaState:
    """An allocation as a replica: Nomad's client status, and whether its checks pass."""
    if ready:
        return ReplicaState.READY
    if client_status in ("failed", "lost"):
        return ReplicaState.FAILED
    if client_status == "complete":
        return ReplicaState.EXITED
    return ReplicaState.STARTING  # pending, or running while its checks do not pass yet
