"""BatchAPI jobs on Nomad, a contract test: no Nomad binary can run here, so the worker template the plan
renders, and the batch jobs the controller registers from it, are checked against Nomad's API schema
through the stand-in (tests/nomad_standin.py), as the controller's calls go."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from nomad_standin import NomadStandIn

from nomad_schema import schema_errors
from stack.control.batch.jobs import JobRef
from stack.spec import load_spec
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.batch_workers import ITEM, NomadWorkers, worker_variable
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.plan import plan as plan_nomad

SPEC = """\
project: nb
gateway: {api_keys: [nomad-batch-key-1]}
apis:
  - name: scorer
    kind: BatchAPI
    predictor: {path: predictor.py, config: {factor: 2}, env: {AWS_REGION: eu-west-1}}
    compute: {cpu: 500m, mem: 512Mi, gpu: 1}
"""


@pytest.fixture
def planned(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "predictor.py").write_text(
        "class PythonPredictor:\n    def predict(self, payload, batch_id):\n        pass\n"
    )
    (tmp_path / "stack.yaml").write_text(SPEC)
    return plan_nomad(load_spec(tmp_path), registry="registry.local:5000").files


def test_the_plan_renders_a_worker_template_and_routes_the_endpoint_to_the_controller(planned: dict) -> None:
    worker = json.loads(planned["nb-scorer-worker.json"])
    assert schema_errors(worker) == []
    job = worker["Job"]
    assert job["Type"] == "batch" and job["Meta"]["stack_role"] == "batch-worker"
    (group,) = job["TaskGroups"]
    assert group["RestartPolicy"]["Attempts"] == 0 and group["ReschedulePolicy"]["Attempts"] == 0
    task = group["Tasks"][0]
    assert task["Config"]["args"] == ["-m", "serving.batch"] and task["Config"]["cap_drop"] == ["all"]
    assert task["Resources"]["Devices"][0]["Name"] == "nvidia/gpu" and task["Resources"]["MemoryMB"] == 512
    assert "nb-activator" in task["Templates"][0]["EmbeddedTmpl"]  # where the controller is
    assert "nb-scorer.json" not in planned  # no standing replicas
    controller = json.loads(planned["nb-autoscaler.json"])["Job"]
    group = controller["TaskGroups"][0]
    assert group["EphemeralDisk"]["Sticky"] and group["EphemeralDisk"]["Migrate"]  # the queue survives restarts
    args = group["Tasks"][0]["Config"]["args"]
    assert args[args.index("--state-dir") + 1] == "/alloc/data" and "--activator-port" in args
    assert any("autoscaler/api_keys" in t["EmbeddedTmpl"] for t in group["Tasks"][0]["Templates"])
    config = json.loads(group["Tasks"][0]["Env"]["STACK_AUTOSCALER_CONFIG"])
    assert config["batch"] == [
        {"name": "scorer", "router": "nb-scorer", "endpoint": "/scorer", "config": {"factor": 2}}
    ]
    traefik = planned["nb-traefik.nomad.hcl"]
    fallback = yaml.safe_load(traefik.split("<<-ROUTES")[1].split("ROUTES")[0]) if "<<-ROUTES" in traefik else None
    text = json.dumps(fallback) if fallback else traefik
    assert "/__stack/jobs/scorer" in text and "nb-activator@nomad" in text


def test_the_controller_runs_a_job_as_one_nomad_batch_job_a_group_per_worker(
    planned: dict, standin: NomadStandIn
) -> None:
    api = NomadApi(NomadSettings.from_env(standin.address, env={}))
    template = json.loads(planned["nb-scorer-worker.json"])["Job"]
    api.put_variable(worker_variable("nb", "scorer"), {ITEM: json.dumps(template)})  # as `stack up --nomad`
    workers = NomadWorkers(api, "nb")

    async def run() -> None:
        assert await workers.workers("j1") == {}
        await workers.start(JobRef("j1", "scorer", "tok", "w1"))
        await workers.start(JobRef("j1", "scorer", "tok", "w2"))
        states = await workers.workers("j1")
        assert set(states) == {"w1", "w2"} and all(s.alive for s in states.values())
        job = standin.jobs["nb-batch-j1"].job
        assert job["Type"] == "batch" and [g["Name"] for g in job["TaskGroups"]] == ["w1", "w2"]
        env = job["TaskGroups"][1]["Tasks"][0]["Env"]
        assert env["STACK_JOB_ID"] == "j1" and env["STACK_JOB_WORKER"] == "w2" and env["STACK_JOB_TOKEN"] == "tok"
        assert env["AWS_REGION"] == "eu-west-1" and "STACK_SERVING_CONFIG" in env

        standin.end_allocation("nb-batch-j1", "w1", 137, oom=True)  # killed for memory
        states = await workers.workers("j1")
        assert not states["w1"].alive and states["w1"].exit_code == 137 and states["w1"].oom
        await workers.start(JobRef("j1", "scorer", "tok", "w3"))  # its replacement; w2 is left running
        job = standin.jobs["nb-batch-j1"].job
        assert [g["Name"] for g in job["TaskGroups"]] == ["w2", "w3"]
        assert (await workers.workers("j1"))["w2"].alive

        fresh = NomadWorkers(api, "nb")  # a restarted controller purges what the old one left
        await fresh.stop("j1")
        assert "nb-batch-j1" not in standin.jobs

    asyncio.run(run())
