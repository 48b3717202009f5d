"""BatchAPI jobs in the stack's controller: the endpoint clients submit to, and the workers' queue.

Clients, through the gateway (the API's route points here, as Cortex's operator answered):

    POST   /<endpoint>               submit (stack.control.batch.submission): Cortex's response fields
    GET    /<endpoint>?jobID=ID      the job in Cortex's shape: status, batches_in_queue, batch_metrics, ...
    GET    /<endpoint>               every job of the API, newest first
    DELETE /<endpoint>?jobID=ID      stop it: its workers are stopped, its batches left unrun

Workers (started for one job, reaching the controller on the stack's own network with the job's
token; never through the gateway): `GET /__stack/work/JOB` the job spec, `POST .../lease` the next
batch, `POST .../batches/ID` its result, `POST .../complete` after on_job_complete.

The run loop (every `TICK` seconds) keeps each running job's workers: it releases the batches of
workers that died, starts workers while batches remain (up to `workers`), ends the job when every
batch has ended and on_job_complete ran — `status_succeeded`, else `status_completed_with_failures`
— or at its timeout, and stops its workers. A job whose workers keep failing to start ends
`status_worker_error` (`status_worker_oom` when the target saw them killed for memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from serving.batch import WORK_PATH
from serving.keys import carries_key, parse_keys
from stack.control.autoscale.config import BatchRoute
from stack.control.batch import store as st
from stack.control.batch.store import Job, JobSpec, JobStore
from stack.control.batch.submission import MAX_SUBMISSION_BYTES, BadSubmission, batches, parse

LOGGER = logging.getLogger("stack.control.batch")
JOBS = "/__stack/jobs"  # the gateway's route for a BatchAPI points here (stack.routes)
WORK = WORK_PATH  # the workers' side; the gateway routes nothing here
TOKEN_HEADER = "X-Stack-Job-Token"
TICK = 0.5
FAILED_STARTS = 3  # worker starts that fail in a row, per worker slot, before the job is a worker error


@dataclass(frozen=True)
class WorkerState:
    alive: bool
    exit_code: int | None = None  # once it ended
    oom: bool = False  # killed for memory


@dataclass(frozen=True)
class JobRef:
    """What a target needs to start a worker of a job."""

    job_id: str
    api: str
    token: str
    worker: str


class WorkerPool(Protocol):
    """How one target runs a job's workers (local processes, Compose containers, a Nomad batch job)."""

    async def start(self, ref: JobRef) -> None: ...

    async def workers(self, job_id: str) -> dict[str, WorkerState]:
        """Every worker of the job the target knows, alive or ended."""
        ...

    async def stop(self, job_id: str) -> None:
        """Stop and forget every worker of the job."""
        ...


@dataclass(frozen=True)
class BatchWorkers:
    """What a target contributes to run batch jobs: where the queue lives and how workers start."""

    store: Path  # the jobs' SQLite file, on disk that outlives the controller
    pool: WorkerPool
    keys: Callable[[], list[bytes]] = list  # gateway.api_keys, as the replicas read them


class JobManager:
    def __init__(
        self,
        store: JobStore,
        pool: WorkerPool,
        apis: list[BatchRoute],
        keys: Callable[[], list[bytes]] = list,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pool = pool
        self.keys = keys  # gateway.api_keys: clients send one, as to a realtime API
        self.apis = {a.name: a for a in apis}
        self.clock = clock
        self.tokens: dict[str, str] = {}  # job -> token (a restart makes new ones; old workers are stopped)
        self._started: set[str] = set()  # workers this controller started, per job ("job/w3")
        self._worker_counts: dict[str, dict[str, int]] = {}  # job -> running, succeeded, failed
        self._enqueuing: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    def configure(self, apis: list[BatchRoute]) -> None:
        self.apis = {a.name: a for a in apis}

    # -- the clients' side -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api = self.apis.get(request.match_info["api"])
        if api is None:
            return _error(404, "no BatchAPI is served at this path")
        keys = self.keys()
        if keys and not carries_key(request.headers, keys):
            response = _error(401, "missing or unknown API key")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        job_id = request.query.get("jobID")
        if request.method == "POST" and not job_id:
            return await self._submit(api, request)
        if request.method == "GET" and not job_id:
            return web.json_response([self._cortex(job)["job_status"] for job in self.store.jobs(api.name)])
        if request.method not in ("GET", "DELETE") or not job_id:
            return _error(405, "POST / submits a job; GET or DELETE ?jobID=ID reads or stops one")
        job = self.store.get(job_id)
        if job is None or job.spec.api_name != api.name:
            return _error(404, f"no job {job_id} for API {api.name}")
        if request.method == "GET":
            return web.json_response(self._cortex(job))
        if self.store.finish(job_id, st.STOPPED, "stopped by a DELETE", self.clock()):
            await self.pool.stop(job_id)
            LOGGER.info(f"job {job_id} of {api.name}: stopped")
        return web.json_response({"message": f"stopped job {job_id}"})

    async def _submit(self, api: BatchRoute, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_SUBMISSION_BYTES:
            return _error(413, "a submission must be under 10 MiB: put the items in S3 (file_path_lister)")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        try:
            submission = parse(body)
        except BadSubmission as exc:
            return _error(400, str(exc), field=exc.field)
        job_id = _job_id(self.clock())
        spec = JobSpec(
            job_id,
            api.name,
            submission.workers,
            {**api.config, **submission.config},
            submission.timeout,
            submission.tries,
            submission.dead_letter,
            submission.described(),
        )
        self.store.create(spec, self.clock())
        if submission.source == "item_list":  # in the request: queued before the answer
            self.store.add_batches(job_id, batches(submission))
            self.store.enqueued(job_id, self.clock())
        else:  # S3: listed and read in the background (status_enqueuing until then)
            task = asyncio.get_running_loop().create_task(self._enqueue(job_id, submission))
            self._enqueuing.add(task)
            task.add_done_callback(self._enqueuing.discard)
        LOGGER.info(f"job {job_id} of {api.name}: submitted ({submission.workers} worker(s))")
        self.wake.set()
        return web.json_response(self._response(self.store.get(job_id)))

    async def _enqueue(self, job_id: str, submission: Any) -> None:
        def work() -> None:
            chunk: list[str] = []
            for text in batches(submission):
                chunk.append(text)
                if len(chunk) >= 100:
                    self.store.add_batches(job_id, chunk)
                    chunk = []
            self.store.add_batches(job_id, chunk)

        try:
            await asyncio.to_thread(work)
        except Exception as exc:
            LOGGER.error(f"job {job_id}: enqueuing failed: {exc}")
            self.store.finish(job_id, st.ENQUEUE_FAILED, str(exc), self.clock())
            return
        self.store.enqueued(job_id, self.clock())
        self.wake.set()

    def _response(self, job: Job | None) -> dict[str, Any]:
        assert job is not None
        s = job.spec
        return {
            "job_id": s.job_id,
            "api_name": s.api_name,
            "workers": s.workers,
            "config": s.config,
            "api_id": s.api_name,
            "sqs_url": "",
            "timeout": s.timeout,
            "sqs_dead_letter_queue": s.dead_letter,
            "created_time": _time(job.created),
            **s.source,
        }

    def _cortex(self, job: Job) -> dict[str, Any]:
        status = self._response(job) | {
            "status": job.status,
            "batches_in_queue": job.remaining,
            "total_batch_count": job.total,
            "batch_metrics": {
                "succeeded": job.counts.get("succeeded", 0),
                "failed": job.counts.get("failed", 0),
                "failed_attempts": job.failed_tries,
                **({"avg_time_per_batch": job.avg_seconds} if job.avg_seconds is not None else {}),
            },
            "start_time": _time(job.started),
        }
        if job.status in st.IN_PROGRESS:
            status["worker_counts"] = self._worker_counts.get(job.id, {})
        if job.ended is not None:
            status["end_time"] = _time(job.ended)
        if job.message:
            status["message"] = job.message
        if job.counts.get("failed"):
            status["failed_batches"] = self.store.failures(job.id)
        api = self.apis.get(job.spec.api_name)
        endpoint = api.endpoint if api else f"/{job.spec.api_name}"
        return {"job_status": status, "endpoint": f"{endpoint}?jobID={job.id}"}

    # -- the workers' side -----------------------------------------------------------------------

    async def work(self, request: web.Request) -> web.Response:
        job_id, action = request.match_info["job"], request.match_info.get("action", "")
        token = self.tokens.get(job_id)
        if token is None or not hmac.compare_digest(token, request.headers.get(TOKEN_HEADER, "")):
            return _error(403, "not a worker of this job")
        job = self.store.get(job_id)
        if job is None:
            return _error(404, f"no job {job_id}")
        body = await request.json() if request.can_read_body else {}
        worker = str(body.get("worker", request.query.get("worker", "")))
        if request.method == "GET":
            spec = {
                "job_id": job.id,
                "api_name": job.spec.api_name,
                "config": job.spec.config,
                "workers": job.spec.workers,
                "total_batch_count": job.total,
                "start_time": _time(job.started),
            }
            return web.json_response(spec)
        if job.status not in st.IN_PROGRESS:
            return web.json_response({"done": True})
        if action == "lease":
            if job.status == st.ENQUEUING:
                return web.json_response({"wait": TICK})
            batch = self.store.lease(job_id, worker)
            if batch is not None:
                return web.json_response({"batch_id": batch.id, "payload": batch.payload})
            if job.remaining:
                return web.json_response({"wait": TICK})  # the last batches are with other workers
            if self.store.claim_completion(job_id, worker):
                return web.json_response({"complete": True})
            return web.json_response({"done": True})
        if action.startswith("batches/"):
            batch_id = action.removeprefix("batches/")
            if body.get("ok"):
                kept = self.store.succeeded(job_id, batch_id, worker, float(body.get("seconds", 0.0)))
            else:
                kept = self.store.raised(job_id, batch_id, worker, str(body.get("error", "")), job.spec.tries)
            self.wake.set()
            return web.json_response({"recorded": kept})
        if action == "complete":
            self._finish_job(self.store.get(job_id), body.get("error"))
            self.wake.set()
            return web.json_response({"done": True})
        return _error(404, f"no worker action {action}")

    def _finish_job(self, job: Job | None, error: Any) -> None:
        if job is None or job.status not in st.IN_PROGRESS:
            return
        failed = job.counts.get("failed", 0)
        status = st.COMPLETED_WITH_FAILURES if failed or error else st.SUCCEEDED
        message = f"on_job_complete raised: {error}" if error else (f"{failed} batch(es) failed" if failed else "")
        if self.store.finish(job.id, status, message, self.clock()):
            LOGGER.info(f"job {job.id} of {job.spec.api_name}: {status} {message}".rstrip())

    # -- keeping the workers ---------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception:
                LOGGER.exception("keeping the batch jobs failed; trying again")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK)

    async def tick(self) -> None:
        now = self.clock()
        for job in self.store.jobs(in_progress=True):
            if job.spec.api_name not in self.apis:
                self.store.finish(job.id, st.STOPPED, "the BatchAPI was removed from stack.yaml", now)
                await self.pool.stop(job.id)
                continue
            if job.spec.timeout is not None and now - job.created > job.spec.timeout:
                self.store.finish(job.id, st.TIMED_OUT, f"ran past its timeout of {job.spec.timeout}s", now)
                await self.pool.stop(job.id)
                LOGGER.info(f"job {job.id}: timed out")
                continue
            await self._keep(job)
        for job_id in [j for j in self.tokens if not self._in_progress(j)]:
            await self.pool.stop(job_id)
            self.tokens.pop(job_id, None)
            self._worker_counts.pop(job_id, None)

    async def _keep(self, job: Job) -> None:
        if job.id not in self.tokens:
            # This controller did not start the job's workers (a restart): any left over cannot be
            # told from new ones, so they go, and their batches return to the queue.
            await self.pool.stop(job.id)
            self.tokens[job.id] = secrets.token_urlsafe(24)
        workers = await self.pool.workers(job.id)
        alive = {name for name, state in workers.items() if state.alive}
        self.store.release(job.id, alive, job.spec.tries)
        if job.completer is not None and job.completer not in alive:
            self.store.reset_completer(job.id)  # it died during on_job_complete: another worker runs it
        for name, state in workers.items():
            key = f"{job.id}/{name}"
            if state.alive or key not in self._started:
                continue
            self._started.discard(key)
            if state.exit_code == 0 and not state.oom:
                continue
            failures = self.store.worker_failed(job.id)
            LOGGER.warning(f"job {job.id}: worker {name} ended with code {state.exit_code}")
            if failures >= FAILED_STARTS * job.spec.workers and self._no_progress(job):
                status = st.WORKER_OOM if state.oom else st.WORKER_ERROR
                why = f"its workers keep failing (the last, {name}: exit code {state.exit_code})"
                self.store.finish(job.id, status, why, self.clock())
                await self.pool.stop(job.id)
                return
        job = self.store.get(job.id) or job
        ended = sum(not s.alive and s.exit_code == 0 for s in workers.values())
        self._worker_counts[job.id] = {"running": len(alive), "succeeded": ended, "failed": job.worker_failures}
        if job.status != st.RUNNING:
            return
        # Every batch ended: one worker runs on_job_complete (a live one will ask for it).
        wanted = min(job.spec.workers, job.remaining) if job.remaining else int(not alive)
        for _ in range(wanted - len(alive)):
            name = self.store.worker_started(job.id)
            self._started.add(f"{job.id}/{name}")
            await self.pool.start(JobRef(job.id, job.spec.api_name, self.tokens[job.id], name))

    def _in_progress(self, job_id: str) -> bool:
        job = self.store.get(job_id)
        return job is not None and job.status in st.IN_PROGRESS

    def _no_progress(self, job: Job) -> bool:
        return job.counts.get("succeeded", 0) == 0 and job.failed_tries == 0

    async def close(self) -> None:
        for task in list(self._enqueuing):
            task.cancel()


def keys_file(path: str) -> Callable[[], list[bytes]]:
    """gateway.api_keys from a file the controller's target mounts or renders (one per line, # comments),
    read on each call so a rewritten file applies at once; no file: no keys."""

    def read() -> list[bytes]:
        try:
            return [entry.key for entry in parse_keys(Path(path).read_text())]
        except FileNotFoundError:
            return []

    return read


def job_routes(manager: JobManager) -> list[web.RouteDef]:
    return [
        web.route("*", JOBS + "/{api}{tail:/?}", manager.handle),
        web.get(WORK + "/{job}", manager.work),
        web.post(WORK + "/{job}/{action:.+}", manager.work),
    ]


def _error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _time(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _job_id(now: float) -> str:
    """Cortex's shape: time-ordered, unique (e.g. 69d8f2a1c3b4e5f6)."""
    return f"{int(now * 1000):x}"[-9:] + secrets.token_hex(4)
