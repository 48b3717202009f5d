"""A stand-in of Nomad's HTTP API, for contract tests: no Nomad binary can run here.

It answers the endpoints `stack up/status/logs/scale/down --nomad` and the
autoscaler use, as Nomad's OpenAPI description (tests/schemas/) says:

- every registered job is validated against the schema with every object
  closed (`additionalProperties: false`): a misspelt field is a 400, as a
  strict Nomad would make it (the real one silently ignores it);
- every response it builds is validated too, so it cannot drift from Nomad;
- it simulates allocations and deployments: each poll of a deployment moves
  it one step (pending → running → healthy → successful), so tests wait on
  states, never on time; a job can be made to fail (task events, log lines),
  and then its deployment fails and the job reverts, as `auto_revert` does;
- scale (refused with 400 while a deployment runs), deregister (and purge),
  nodes with NVIDIA devices, allocation logs, an ACL token, namespaces;
- it records every request.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nomad_schema import schema_errors

TIMEOUT = 30.0


@dataclass
class Failure:
    events: list[dict[str, Any]]
    log: str


@dataclass
class JobState:
    job: dict[str, Any]
    versions: list[dict[str, Any]] = field(default_factory=list)
    allocations: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # scaling events
    logs: dict[str, str] = field(default_factory=dict)  # alloc id -> stderr
    deployed: dict[str, str] = field(default_factory=dict)  # alloc id -> the deployment that placed it


class NomadStandIn:
    def __init__(self, token: str | None = None, namespaces: tuple[str, ...] = ("default",), gpus: int = 0) -> None:
        self.token = token
        self.namespaces = set(namespaces)
        self.gpus = gpus
        self.jobs: dict[str, JobState] = {}
        self.variables: dict[str, dict[str, Any]] = {}  # Nomad Variables by path
        self.service_registrations: dict[str, list[dict[str, Any]]] = {}  # what a test says runs where
        self.fail: dict[str, Failure] = {}  # job id -> how its next deployment fails
        self.requests: list[tuple[str, str, Any]] = []
        self.problems: list[str] = []
        self._index = itertools.count(100)
        self._lock = threading.Lock()
        self.port = 0

    def end_allocation(self, job_id: str, group: str, exit_code: int, oom: bool = False) -> None:
        """A test's say: the group's allocation ended (a batch worker that finished, or was killed)."""
        for alloc in self.jobs[job_id].allocations:
            if alloc["TaskGroup"] == group and alloc["ClientStatus"] in ("pending", "running"):
                event = {"Type": "OOM Killed" if oom else "Terminated", "ExitCode": exit_code, "Time": 0}
                task = next(iter(alloc["TaskStates"]))
                alloc["TaskStates"][task].update({"State": "dead", "Failed": exit_code != 0, "Events": [event]})
                alloc["ClientStatus"] = "complete" if exit_code == 0 else "failed"

    # -- serving it on a thread ------------------------------------------------------------

    def start(self) -> NomadStandIn:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app())
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="nomad-standin", daemon=True)
        self._thread.start()
        assert ready.wait(TIMEOUT)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/v1/status/leader", self.leader)
        r.add_get("/v1/namespace/{name}", self.namespace)
        r.add_route("POST", "/v1/jobs", self.register)
        r.add_route("PUT", "/v1/jobs", self.register)
        r.add_get("/v1/job/{id}", self.get_job)
        r.add_delete("/v1/job/{id}", self.deregister)
        r.add_get("/v1/job/{id}/deployment", self.get_deployment)
        r.add_get("/v1/job/{id}/allocations", self.get_allocations)
        r.add_get("/v1/job/{id}/scale", self.scale_status)
        r.add_post("/v1/job/{id}/scale", self.scale)
        r.add_get("/v1/services", self.list_services)
        r.add_get("/v1/service/{name}", self.get_service)
        r.add_put("/v1/var/{path:.+}", self.put_variable)
        r.add_get("/v1/var/{path:.+}", self.get_variable)
        r.add_delete("/v1/var/{path:.+}", self.delete_variable)
        r.add_get("/v1/nodes", self.nodes)
        r.add_get("/v1/node/{id}", self.node)
        r.add_get("/v1/client/fs/logs/{alloc}", self.logs)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, body))
        if self.token is not None and request.headers.get("X-Nomad-Token") != self.token:
            return web.Response(status=403, text="Permission denied")
        namespace = request.query.get("namespace", "default")
        if namespace not in self.namespaces and request.path.startswith("/v1/job"):
            return web.Response(status=400, text=f'namespace "{namespace}" not found')
        if request.path.startswith("/v1/client/fs/logs/") and request.query.get("follow") == "true":
            return await handler(request)  # type: ignore[no-any-return]  # it streams: it must not hold the lock
        with self._lock:
            return await handler(request)  # type: ignore[no-any-return]

    def _respond(self, body: Any, component: str | None = None) -> web.Response:
        if component is not None:
            self.problems += [f"response {component}: {p}" for p in schema_errors(body, component)]
        return web.json_response(body)

    # -- endpoints -------------------------------------------------------------------------

    async def leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:4647")

    async def namespace(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.namespaces:
            return web.Response(status=404, text="namespace not found")
        return self._respond({"Name": name, "Description": "", "CreateIndex": 1, "ModifyIndex": 1}, "Namespace")

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        problems = schema_errors(body, "JobRegisterRequest")
        if problems:
            self.problems += [f"register: {p}" for p in problems]
            return web.Response(status=400, text="; ".join(problems))
        job = copy.deepcopy(body["Job"])
        state = self.jobs.get(job["ID"])
        index = next(self._index)
        if state is None or state.job.get("Stop"):
            version = 0 if state is None else state.job["Version"] + 1
            state = self.jobs[job["ID"]] = state or JobState(job)
        else:
            version = state.job["Version"] + 1
        previous = state.job if state.versions else None
        job.update({"Version": version, "JobModifyIndex": index, "ModifyIndex": index, "Stop": False})
        job.setdefault("CreateIndex", index)
        state.job = job
        state.versions.append(copy.deepcopy(job))
        self._deploy(state, previous)
        response = {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index, "JobModifyIndex": index, "Warnings": ""}
        return self._respond(response, "JobRegisterResponse")

    async def list_services(self, request: web.Request) -> web.Response:
        """The catalogue as Traefik's Nomad provider lists it (the OpenAPI file has no schema for it)."""
        by_namespace: dict[str, list[dict[str, Any]]] = {}
        for name, items in sorted(self.service_registrations.items()):
            for namespace in sorted({item.get("Namespace", "default") for item in items}):
                tags = sorted({tag for item in items for tag in item.get("Tags") or []})
                by_namespace.setdefault(namespace, []).append({"ServiceName": name, "Tags": tags})
        return web.json_response([{"Namespace": ns, "Services": svcs} for ns, svcs in by_namespace.items()])

    async def get_service(self, request: web.Request) -> web.Response:
        found = self.service_registrations.get(request.match_info["name"], [])
        for item in found:
            self.problems += [f"service registration: {p}" for p in schema_errors(item, "ServiceRegistration")]
        return web.json_response(found)

    async def put_variable(self, request: web.Request) -> web.Response:
        body = await request.json()
        problems = schema_errors(body, "Variable")
        path = request.match_info["path"]
        if body.get("Path") != path:
            problems.append(f"Path {body.get('Path')!r} is not the URL's {path!r}")
        if not isinstance(body.get("Items"), dict) or not body["Items"]:
            problems.append("a variable needs at least one item")
        if problems:
            self.problems += [f"variable: {p}" for p in problems]
            return web.Response(status=400, text="; ".join(problems))
        index = next(self._index)
        self.variables[path] = {**body, "CreateIndex": index, "ModifyIndex": index}
        return self._respond(self.variables[path], "Variable")

    async def get_variable(self, request: web.Request) -> web.Response:
        found = self.variables.get(request.match_info["path"])
        return (
            web.Response(status=404, text="variable not found") if found is None else self._respond(found, "Variable")
        )

    async def delete_variable(self, request: web.Request) -> web.Response:
        self.variables.pop(request.match_info["path"], None)
        return web.json_response({})

    async def get_job(self, request: web.Request) -> web.Response:
        state = self.jobs.get(request.match_info["id"])
        if state is None:
            return web.Response(status=404, text="job not found")
        return self._respond(state.job, "Job")

    async def deregister(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        state = self.jobs.get(job_id)
        if state is None:
            return web.Response(status=404, text="job not found")
        for alloc in state.allocations:
            alloc.update({"DesiredStatus": "stop", "ClientStatus": "complete"})
        if request.query.get("purge") == "true":
            del self.jobs[job_id]
        else:
            state.job["Stop"] = True
        index = next(self._index)
        return self._respond({"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index, "JobModifyIndex": index})

    async def get_deployment(self, request: web.Request) -> web.Response:
        state = self.jobs.get(request.match_info["id"])
        if state is None:
            return web.Response(status=404, text="job not found")
        if state.deployment is None:
            return web.json_response(None)
        self._advance(state)
        return self._respond(state.deployment, "Deployment")

    async def get_allocations(self, request: web.Request) -> web.Response:
        state = self.jobs.get(request.match_info["id"])
        if state is None:
            return web.Response(status=404, text="job not found")
        self._advance(state)
        for alloc in state.allocations:
            self.problems += [f"allocation: {p}" for p in schema_errors(alloc, "AllocationListStub")]
        return web.json_response(state.allocations)

    async def scale_status(self, request: web.Request) -> web.Response:
        state = self.jobs.get(request.match_info["id"])
        if state is None:
            return web.Response(status=404, text="job not found")
        live = [a for a in state.allocations if a["DesiredStatus"] == "run"]
        healthy = [a for a in live if (a.get("DeploymentStatus") or {}).get("Healthy")]
        group = {
            "Desired": self._group(state)["Count"],
            "Placed": len(live),
            "Running": sum(a["ClientStatus"] == "running" for a in live),
            "Healthy": len(healthy),
            "Unhealthy": 0,
            "Events": state.events,
        }
        body = {
            "JobID": state.job["ID"],
            "JobStopped": bool(state.job.get("Stop")),
            "Namespace": "default",
            "JobCreateIndex": state.job["CreateIndex"],
            "JobModifyIndex": state.job["JobModifyIndex"],
            "TaskGroups": {self._group(state)["Name"]: group},
        }
        return self._respond(body, "JobScaleStatusResponse")

    async def scale(self, request: web.Request) -> web.Response:
        state = self.jobs.get(request.match_info["id"])
        if state is None:
            return web.Response(status=404, text="job not found")
        body = await request.json()
        problems = schema_errors(body, "ScalingRequest")
        if problems:
            self.problems += [f"scale: {p}" for p in problems]
            return web.Response(status=400, text="; ".join(problems))
        group = self._group(state)
        if body.get("Target") != {"Group": group["Name"]}:
            return web.Response(status=400, text="missing or unknown task group")
        if state.deployment is not None and state.deployment["Status"] == "running":
            return web.Response(status=400, text="job scaling blocked due to active deployment")
        index = next(self._index)
        state.events.append(
            {
                "Count": body["Count"],
                "PreviousCount": group["Count"],
                "Message": body.get("Message", ""),
                "Meta": body.get("Meta") or {},
                "Time": time.time_ns(),
                "CreateIndex": index,
                "Error": False,
            }
        )
        group["Count"] = body["Count"]
        state.job["JobModifyIndex"] = index
        live = [a for a in state.allocations if a["DesiredStatus"] == "run"]
        for alloc in live[body["Count"] :]:
            alloc.update({"DesiredStatus": "stop", "ClientStatus": "complete"})
        for _ in range(body["Count"] - len(live)):
            state.allocations.append(self._allocation(state, healthy=True))
        response = {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index, "JobModifyIndex": index, "Warnings": ""}
        return self._respond(response, "JobRegisterResponse")

    async def nodes(self, request: web.Request) -> web.Response:
        stub = {
            "ID": "node-1",
            "Name": "gpu-box-1",
            "Address": "127.0.0.1",
            "Datacenter": "dc1",
            "Status": "ready",
            "SchedulingEligibility": "eligible",
            "Drain": False,
        }
        return self._respond([stub], None)

    async def node(self, request: web.Request) -> web.Response:
        devices = (
            [
                {
                    "Vendor": "nvidia",
                    "Type": "gpu",
                    "Name": "H100",
                    "Instances": [{"ID": f"GPU-{i}", "Healthy": True} for i in range(self.gpus)],
                }
            ]
            if self.gpus
            else []
        )
        body = {
            "ID": request.match_info["id"],
            "Name": "gpu-box-1",
            "Status": "ready",
            "NodeResources": {"Devices": devices},
        }
        return self._respond(body, "Node")

    async def logs(self, request: web.Request) -> web.StreamResponse:
        alloc_id = request.match_info["alloc"]
        state = next((s for s in self.jobs.values() if alloc_id in s.logs), None)
        if state is None:
            return web.Response(status=404, text="allocation not found")
        stderr = request.query.get("type") == "stderr"
        text = state.logs[alloc_id] if stderr else ""
        if request.query.get("follow") != "true":
            return web.Response(text=text)
        # Following, as Nomad does: from `offset` bytes before the end (origin=end) or after the start, then
        # what the task writes, until the allocation stops or the client goes away.
        offset = int(request.query.get("offset", "0"))
        sent = max(0, len(text) - offset) if request.query.get("origin") == "end" else min(offset, len(text))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        alloc = next(a for a in state.allocations if a["ID"] == alloc_id)
        while True:
            text = state.logs[alloc_id] if stderr else ""
            if len(text) > sent:
                await response.write(text[sent:].encode())
                sent = len(text)
            if alloc["ClientStatus"] not in ("pending", "running"):
                break
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    # -- the simulation ------------------------------------------------------------------------

    def _group(self, state: JobState) -> dict[str, Any]:
        group: dict[str, Any] = state.job["TaskGroups"][0]
        return group

    def _allocation(
        self, state: JobState, healthy: bool = False, group: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        alloc_id = str(uuid.uuid4())
        job, group = state.job, group or self._group(state)
        task = group["Tasks"][0]["Name"]
        state.logs[alloc_id] = f"INFO ready: api {job['ID']} at http://0.0.0.0:8888\n"
        alloc: dict[str, Any] = {
            "ID": alloc_id,
            "Name": f"{job['ID']}.{group['Name']}[{len(state.allocations)}]",
            "JobID": job["ID"],
            "JobVersion": job["Version"],
            "TaskGroup": group["Name"],
            "NodeID": "node-1",
            "NodeName": "gpu-box-1",
            "DesiredStatus": "run",
            "ClientStatus": "running" if healthy else "pending",
            "TaskStates": {task: {"State": "running" if healthy else "pending", "Failed": False, "Restarts": 0}},
            "CreateIndex": next(self._index),
        }
        if healthy:
            alloc["DeploymentStatus"] = {"Healthy": True}
        return alloc

    def _deploy(self, state: JobState, previous: dict[str, Any] | None) -> None:
        if state.job.get("Type") == "batch":  # as Nomad's batch scheduler: a group that is new gets its allocation;
            groups = {g["Name"]: g for g in state.job["TaskGroups"]}  # one left in place keeps its own
            for alloc in state.allocations:
                if alloc["TaskGroup"] not in groups and alloc["ClientStatus"] in ("pending", "running"):
                    alloc.update({"DesiredStatus": "stop", "ClientStatus": "complete"})
            placed = {a["TaskGroup"] for a in state.allocations}
            state.allocations += [self._allocation(state, True, g) for n, g in groups.items() if n not in placed]
            state.deployment = None
            return
        group = self._group(state)
        if "Update" not in state.job:  # system-ish jobs of ours: no deployment, allocations at once
            for alloc in state.allocations:
                alloc.update({"DesiredStatus": "stop", "ClientStatus": "complete"})
            state.allocations += [self._allocation(state, healthy=True) for _ in range(group["Count"])]
            state.deployment = None
            return
        state.deployment = {
            "ID": str(uuid.uuid4()),
            "JobID": state.job["ID"],
            "JobVersion": state.job["Version"],
            "Namespace": "default",
            "Status": "running",
            "StatusDescription": "Deployment is running",
            "TaskGroups": {
                group["Name"]: {
                    "DesiredTotal": group["Count"],
                    "PlacedAllocs": 0,
                    "HealthyAllocs": 0,
                    "UnhealthyAllocs": 0,
                    "AutoRevert": True,
                }
            },
        }
        state.allocations += [self._allocation(state) for _ in range(group["Count"])]
        for alloc in state.allocations[-group["Count"] :]:
            state.deployed[alloc["ID"]] = state.deployment["ID"]
        state.versions[-1]["_previous"] = previous is not None

    def _advance(self, state: JobState) -> None:
        """One step of every new allocation, and the deployment's verdict once they are all decided."""
        deployment = state.deployment
        if deployment is None or deployment["Status"] != "running":
            return
        group = self._group(state)
        new = [a for a in state.allocations if state.deployed.get(a["ID"]) == deployment["ID"]]
        failure = self.fail.get(state.job["ID"])
        for alloc in new:
            task_state = next(iter(alloc["TaskStates"].values()))
            if alloc["ClientStatus"] == "pending":
                alloc["ClientStatus"] = "running"
                task_state["State"] = "running"
            elif "DeploymentStatus" not in alloc:
                if failure is not None:
                    alloc["ClientStatus"] = "failed"
                    alloc["DeploymentStatus"] = {"Healthy": False}
                    task_state.update({"State": "dead", "Failed": True, "Events": failure.events})
                    state.logs[alloc["ID"]] = failure.log
                else:
                    alloc["DeploymentStatus"] = {"Healthy": True}
        tg = deployment["TaskGroups"][group["Name"]]
        tg["PlacedAllocs"] = len(new)
        tg["HealthyAllocs"] = sum(bool(a.get("DeploymentStatus", {}).get("Healthy")) for a in new)
        tg["UnhealthyAllocs"] = sum(a.get("DeploymentStatus", {}).get("Healthy") is False for a in new)
        if tg["UnhealthyAllocs"]:
            deployment["Status"] = "failed"
            previous_version = state.job["Version"] - 1
            deployment["StatusDescription"] = (
                f"Failed due to unhealthy allocations - rolling back to job version {previous_version}"
            )
            for alloc in new:
                alloc["DesiredStatus"] = "stop"
            if previous_version >= 0:  # auto_revert: the previous version again, as a new version
                reverted = copy.deepcopy(state.versions[previous_version])
                reverted.pop("_previous", None)
                reverted["Version"] = state.job["Version"] + 1
                state.job = reverted
                state.versions.append(copy.deepcopy(reverted))
        elif tg["HealthyAllocs"] == tg["DesiredTotal"]:
            deployment["Status"] = "successful"
            deployment["StatusDescription"] = "Deployment completed successfully"
            for alloc in state.allocations:
                if state.deployed.get(alloc["ID"]) != deployment["ID"] and alloc["DesiredStatus"] == "run":
                    alloc.update({"DesiredStatus": "stop", "ClientStatus": "complete"})
