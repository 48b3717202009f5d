"""A BatchAPI job's workers on the local target: `python -m serving.batch` processes of the supervisor.

Each is a child like a replica (it dies with the supervisor: a restarted supervisor hands the
batches they held to new workers), with the API's environment, its own log file
(`.stack/local/logs/<api>-<job>-<worker>.log`) and the job's URL and token on the supervisor's
errors port (127.0.0.1).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

from serving.batch import JOB_TOKEN_ENV, JOB_URL_ENV, JOB_WORKER_ENV
from serving.config import CONFIG_ENV
from serving.exit_reason import STARTUP_ERROR_ENV
from stack.control.batch.jobs import WORK, JobRef, WorkerState
from stack.plan.serving import replica_config
from stack.spec import LoadedSpec
from stack.targets.local.children import start_child, wait_or_kill
from stack.targets.local.state import LocalPaths

STOP_TIMEOUT = 10.0


class LocalWorkers:
    """The `WorkerPool` of the local target."""

    def __init__(self, spec: Callable[[], LoadedSpec], paths: LocalPaths, controller_url: str) -> None:
        self.spec = spec  # the spec the supervisor runs now (a `stack up` changes it)
        self.paths = paths
        self.controller_url = controller_url
        self.procs: dict[str, dict[str, asyncio.subprocess.Process]] = {}  # job -> worker -> process

    async def start(self, ref: JobRef) -> None:
        loaded = self.spec()
        api = loaded.spec.batch_api(ref.api)
        config = replica_config(loaded, api, host="127.0.0.1", port=0, drain_delay=0.0)
        log = self.paths.logs / f"{ref.api}-{ref.job_id}-{ref.worker}.log"
        env = {**os.environ, **api.predictor.env, CONFIG_ENV: config.to_json()}
        env.update(
            {
                JOB_URL_ENV: f"{self.controller_url}{WORK}/{ref.job_id}",
                JOB_TOKEN_ENV: ref.token,
                JOB_WORKER_ENV: ref.worker,
                STARTUP_ERROR_ENV: str(log.with_suffix(".error.json")),
            }
        )
        for name in loaded.secret_env:
            env.pop(name, None)
        proc = await start_child([sys.executable, "-m", "serving.batch"], log, env=env, cwd=loaded.root)
        self.procs.setdefault(ref.job_id, {})[ref.worker] = proc

    async def workers(self, job_id: str) -> dict[str, WorkerState]:
        return {
            name: WorkerState(proc.returncode is None, proc.returncode)
            for name, proc in self.procs.get(job_id, {}).items()
        }

    async def stop(self, job_id: str) -> None:
        procs = self.procs.pop(job_id, {})
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        await asyncio.gather(*(wait_or_kill(p, deadline) for p in procs.values() if p.returncode is None))
