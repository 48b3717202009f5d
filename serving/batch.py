"""A BatchAPI worker: `python -m serving.batch`, started by the stack's controller for one job.

It constructs the predictor as Cortex's batch worker does — `__init__(self, config, job_spec)`
(plus `python_client` / `onnx_client` when the API serves models), `config` being the API's
`predictor.config` with the job's `config` over it — then asks the controller for batches until
there are none: `predict(self, payload, batch_id)` once per batch, `payload` the batch's list of
items. The worker that the controller picks once every batch has ended calls the optional
`on_job_complete(self)`. A batch that raises is reported (the controller retries it up to the
job's tries); the worker goes on with the next.

Environment: STACK_SERVING_CONFIG (the API's serving settings, as for a replica), STACK_JOB_URL
(the controller's `/__stack/work/JOB`; or STACK_JOB_CONTROLLER and STACK_JOB_ID), STACK_JOB_TOKEN,
STACK_JOB_WORKER.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serving import logs
from serving.codec import Headers
from serving.config import CONFIG_ENV, ServingConfig, config_from_env
from serving.exit_reason import report_startup_error
from serving.loader import LoadedPredictor, StartupError, load_predictor
from serving.models import ModelsConfig, ModelStore, model_clients
from serving.runner import EXIT_STARTUP_FAILED

LOGGER = logging.getLogger("serving.batch")
JOB_URL_ENV = "STACK_JOB_URL"
# Or the controller's base URL and the job's id (Nomad renders the address from its service catalogue).
JOB_CONTROLLER_ENV = "STACK_JOB_CONTROLLER"
JOB_ID_ENV = "STACK_JOB_ID"
WORK_PATH = "/__stack/work"  # the controller's workers' endpoints (stack.control.batch.jobs)
JOB_TOKEN_ENV = "STACK_JOB_TOKEN"
JOB_WORKER_ENV = "STACK_JOB_WORKER"
TOKEN_HEADER = "X-Stack-Job-Token"
UNREACHABLE_FOR = 600.0  # seconds the controller may be away (a restart) before the worker gives up


class Controller:
    """The controller's worker endpoints, retried while it restarts."""

    def __init__(self, url: str, token: str, worker: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.worker = worker

    def call(self, path: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps({"worker": self.worker, **body}).encode()
        deadline = time.monotonic() + UNREACHABLE_FOR
        delay = 0.2
        while True:
            request = urllib.request.Request(
                f"{self.url}{path}?worker={self.worker}",
                data=data,
                method="GET" if data is None else "POST",
                headers={TOKEN_HEADER: self.token, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer: dict[str, Any] = json.loads(response.read())
                    return answer
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404):  # a controller that no longer runs this job, or not with us
                    said = exc.read().decode(errors="replace")
                    raise SystemExit(f"the controller refused this worker: {said}") from None
                error: Exception = exc
            except (OSError, ValueError) as exc:
                error = exc
            if time.monotonic() > deadline:
                raise SystemExit(f"the controller at {self.url} is unreachable: {error}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def construct(config: ServingConfig, job_spec: dict[str, Any]) -> LoadedPredictor:
    clients: dict[str, Any] = {"job_spec": job_spec}
    if config.models is not None:
        root = Path(config.project_root) if config.project_root else Path(config.predictor_path).resolve().parent
        store = ModelStore(ModelsConfig.from_dict(config.models), root)
        clients.update(model_clients(config.predictor_type, store, gpu=config.gpus > 0))
    merged = job_spec.get("config") or config.config
    return load_predictor(config.predictor_path, config.predictor_class, merged, config.python_path, clients)


def _call(func: Any, *args: Any, **kwargs: Any) -> Any:
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(result: Any) -> Any:
    return await result


def work(controller: Controller, predictor: LoadedPredictor) -> None:
    while True:
        task = controller.call("/lease", {})
        if task.get("done"):
            return
        if "wait" in task:
            time.sleep(float(task["wait"]))
            continue
        if task.get("complete"):
            error = None
            hook = getattr(predictor.instance, "on_job_complete", None)
            if hook is not None:
                LOGGER.info("every batch has ended: running on_job_complete")
                try:
                    _call(hook)
                except Exception as exc:
                    LOGGER.error("on_job_complete raised", exc_info=exc)
                    error = f"{type(exc).__name__}: {exc}"
            controller.call("/complete", {"error": error})
            return
        batch_id = str(task["batch_id"])
        started = time.perf_counter()
        try:
            _call(
                predictor.predict.call,
                payload=task["payload"],
                batch_id=batch_id,
                query_params={},
                headers=Headers({}),
            )
        except Exception as exc:
            LOGGER.error(f"batch {batch_id} raised", exc_info=exc)
            trace = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            controller.call(f"/batches/{batch_id}", {"ok": False, "error": trace})
        else:
            seconds = time.perf_counter() - started
            LOGGER.info(f"batch {batch_id} done in {seconds:.3f}s")
            controller.call(f"/batches/{batch_id}", {"ok": True, "seconds": seconds})


def main() -> int:
    config = config_from_env()
    if config is None:
        print(f"python -m serving.batch: {CONFIG_ENV} is not set (the controller starts workers)", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format, api=config.api, capture=True)
    url = os.environ.get(JOB_URL_ENV) or f"{os.environ[JOB_CONTROLLER_ENV]}{WORK_PATH}/{os.environ[JOB_ID_ENV]}"
    controller = Controller(url, os.environ[JOB_TOKEN_ENV], os.environ[JOB_WORKER_ENV])
    job_spec = controller.call()
    try:
        predictor = construct(config, job_spec)
    except StartupError as exc:
        LOGGER.error(str(exc))
        report_startup_error(str(exc))
        return EXIT_STARTUP_FAILED
    LOGGER.info(f"worker {controller.worker} of job {job_spec['job_id']} ready")
    work(controller, predictor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
