"""BatchAPI jobs (Cortex v0.25) on `stack up --local`: the real Traefik, the supervisor's durable queue,
worker processes started for each job. Nothing lost, nothing done twice: killed workers, a killed
controller, batches that raise, a stopped job, a timed-out one, S3 sources (moto)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from batch_stack import Batch
from cli import stack
from common import free_port

pytestmark = pytest.mark.xdist_group("batch-local")  # one stack for the module, on one worker

PREDICTOR = """
import json, os, pathlib, time

class PythonPredictor:
    def __init__(self, config, job_spec):
        if config.get("broken"):
            raise RuntimeError("this model cannot load")
        self.out = pathlib.Path(config["out"])
        self.job = job_spec

    def predict(self, payload, batch_id):
        for item in payload:
            if isinstance(item, dict) and "gate" in item:  # held until the test releases it
                gate = self.out / item["gate"]
                (gate.parent / (gate.name + ".started")).write_text(str(os.getpid()))
                deadline = time.monotonic() + 120
                while not (gate.parent / (gate.name + ".release")).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            if item == "boom":
                raise ValueError("boom in the batch")
            if isinstance(item, dict) and "flaky" in item:  # raises the first time only
                marker = self.out / (item["flaky"] + ".tried")
                if not marker.exists():
                    marker.write_text("1")
                    raise ValueError("flaky the first time")
        with open(self.out / f"{self.job['job_id']}.results.jsonl", "a") as results:
            results.write(json.dumps({"batch_id": batch_id, "items": payload}) + "\\n")

    def on_job_complete(self):
        with open(self.out / f"{self.job['job_id']}.complete.jsonl", "a") as done:
            done.write(json.dumps(self.job) + "\\n")
"""


def _spec(port: int, out: Path, extra: str = "") -> str:
    return (
        f"project: batchtest\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\napis:\n"
        f"  - name: scorer\n    kind: BatchAPI\n    predictor:\n      path: predictor.py\n"
        f"      config: {{out: {out}, threshold: 1}}\n"
        f"  - name: broken\n    kind: BatchAPI\n    predictor:\n      path: predictor.py\n"
        f"      config: {{out: {out}, broken: true}}\n"
        f"{extra}"
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batch]:
    root = tmp_path_factory.mktemp("batch")
    out = root / "out"
    out.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    port = free_port()
    (root / "stack.yaml").write_text(_spec(port, out))
    stack("up", "--local", str(root), cwd=root)
    yield Batch(root, port, out)
    stack("down", "--local", str(root), cwd=root, check=False)


def test_every_batch_runs_once_and_on_job_complete_once(batch: Batch) -> None:
    items = list(range(11))
    answer = batch.submit({"workers": 3, "item_list": {"items": items, "batch_size": 3}, "config": {"run": "a"}})
    assert answer.status_code == 200, answer.text
    submitted = answer.json()
    assert submitted["api_name"] == "scorer" and submitted["workers"] == 3
    assert submitted["config"] == {"out": str(batch.out), "threshold": 1, "run": "a"}  # the job's over the API's
    assert {"job_id", "created_time", "timeout", "sqs_dead_letter_queue"} <= set(submitted)
    job_id = submitted["job_id"]
    status = batch.ended(job_id)
    assert status["status"] == "status_succeeded"
    assert status["batch_metrics"]["succeeded"] == 4 and status["batch_metrics"]["failed"] == 0
    assert status["batches_in_queue"] == 0 and status["total_batch_count"] == 4
    assert status["start_time"] and status["end_time"]
    results = batch.results(job_id)
    assert sorted(i for r in results for i in r["items"]) == items  # each item exactly once
    assert len({r["batch_id"] for r in results}) == 4
    (complete,) = batch.completions(job_id)
    assert complete["job_id"] == job_id and complete["total_batch_count"] == 4 and complete["workers"] == 3
    assert complete["config"]["run"] == "a"
    listed = json.loads(stack("jobs", "--local", "--json", "-p", str(batch.root), cwd=batch.root).stdout)
    assert job_id in [j["job_id"] for j in listed]
    table = stack("jobs", "--local", str(batch.root), "scorer", cwd=batch.root).stdout
    assert job_id in table and "status_succeeded" in table


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"item_list": {"items": [1], "batch_size": 1}}, "workers"),
        ({"workers": 0, "item_list": {"items": [1], "batch_size": 1}}, "workers"),
        ({"workers": 1, "item_list": {"items": [1], "batch_size": 0}}, "item_list.batch_size"),
        ({"workers": 1, "item_list": {"items": [1]}}, "item_list.batch_size"),
        ({"workers": 1}, "item_list"),
        (
            {"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "file_path_lister": {"s3_paths": ["s3://b"]}},
            "item_list",
        ),
        ({"workers": 1, "item_list": {"items": ["x" * 200_000, "y" * 99_000], "batch_size": 2}},
         "item_list.batch_size"),
        ({"workers": 1, "delimited_files": {"s3_paths": ["/not/s3"], "batch_size": 1}}, "delimited_files.s3_paths[0]"),
        ({"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "tiemout": 5}, "tiemout"),
        ({"workers": 1, "sqs_dead_letter_queue": {}, "item_list": {"items": [1], "batch_size": 1}},
         "sqs_dead_letter_queue.max_receive_count"),
    ],
)  # fmt: skip
def test_a_bad_submission_is_a_400_naming_the_field(batch: Batch, body: dict[str, Any], field: str) -> None:
    answer = batch.submit(body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field and answer.json()["error"].startswith(f"{field}: ")


def test_unknown_jobs_and_methods_answer_json(batch: Batch) -> None:
    missing = requests.get(batch.url, params={"jobID": "nosuchjob"}, timeout=10)
    assert missing.status_code == 404 and "no job nosuchjob" in missing.json()["error"]
    assert requests.put(batch.url, timeout=10).status_code == 405
    not_json = requests.post(batch.url, data=b"{nope", timeout=10)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]


def test_a_batch_that_raises_is_retried_up_to_its_tries_then_counted_failed(batch: Batch) -> None:
    body = {
        "workers": 1,
        "sqs_dead_letter_queue": {"arn": "unused-here", "max_receive_count": 2},
        "item_list": {"items": [1, "boom", {"flaky": "f1"}, 4], "batch_size": 1},
    }
    job_id = batch.submit(body).json()["job_id"]
    status = batch.ended(job_id)
    assert status["status"] == "status_completed_with_failures"
    assert status["batch_metrics"]["succeeded"] == 3 and status["batch_metrics"]["failed"] == 1
    (failed,) = status["failed_batches"]
    assert failed["tries"] == 2 and "ValueError: boom in the batch" in failed["error"]
    assert sorted(json.dumps(i) for r in batch.results(job_id) for i in r["items"]) == sorted(
        json.dumps(i) for i in [1, {"flaky": "f1"}, 4]
    )  # the flaky one succeeded on its second try, once
    assert len(batch.completions(job_id)) == 1  # on_job_complete runs after failures too
    # Without a dead-letter queue a batch gets one try (as Cortex): no retry.
    once = batch.submit({"workers": 1, "item_list": {"items": [{"flaky": "f2"}], "batch_size": 1}}).json()["job_id"]
    assert batch.ended(once)["batch_metrics"] == {"succeeded": 0, "failed": 1, "failed_attempts": 1}


def test_a_killed_workers_batch_is_handed_out_again_and_none_runs_twice(batch: Batch) -> None:
    items = [{"gate": "kill1"}, *range(8)]
    job_id = batch.submit({"workers": 2, "item_list": {"items": items, "batch_size": 1}}).json()["job_id"]
    victim = batch.started("kill1")
    (batch.out / "kill1.started").write_text("")
    os.kill(victim, signal.SIGKILL)  # mid-batch
    batch.release("kill1")
    status = batch.ended(job_id)
    assert status["status"] == "status_succeeded", status
    results = batch.results(job_id)
    assert len(results) == 9 and len({r["batch_id"] for r in results}) == 9  # nothing lost, none twice
    assert batch.started("kill1") != victim  # the gated batch ran again, on another worker


def test_a_job_survives_its_controller_being_killed(batch: Batch) -> None:
    job_id = batch.submit(
        {"workers": 1, "item_list": {"items": [1, 2, {"gate": "restart"}, 3, 4], "batch_size": 1}}
    ).json()["job_id"]
    worker = batch.started("restart")
    state = json.loads((batch.root / ".stack" / "local" / "state.json").read_text())
    os.kill(state["pid"], signal.SIGKILL)  # the supervisor, and with it its workers
    deadline = time.monotonic() + 30
    while _alive(worker):  # the kernel's parent-death signal arrives asynchronously
        assert time.monotonic() < deadline, "the worker outlived its controller"
        time.sleep(0.05)
    batch.release("restart")
    before = batch.results(job_id)
    assert [r["items"] for r in before] == [[1], [2]]
    batch.up()  # the controller again: the job goes on where it was
    status = batch.ended(job_id)
    assert status["status"] == "status_succeeded"
    items = [json.dumps(i) for r in batch.results(job_id) for i in r["items"]]
    assert sorted(items) == sorted(json.dumps(i) for i in [1, 2, {"gate": "restart"}, 3, 4])  # 1 and 2 not again
    assert len(batch.completions(job_id)) == 1


def test_delete_stops_a_job_and_a_timeout_ends_one(batch: Batch) -> None:
    job_id = batch.submit({"workers": 1, "item_list": {"items": [{"gate": "stop"}, 1], "batch_size": 1}}).json()
    job_id = job_id["job_id"]
    worker = batch.started("stop")
    stopped = requests.delete(batch.url, params={"jobID": job_id}, timeout=10)
    assert stopped.status_code == 200 and stopped.json() == {"message": f"stopped job {job_id}"}
    assert batch.job(job_id)["status"] == "status_stopped"
    deadline = time.monotonic() + 30
    while _alive(worker):
        assert time.monotonic() < deadline, "the stopped job's worker still runs"
        time.sleep(0.1)
    assert batch.results(job_id) == [] and batch.completions(job_id) == []

    timed = batch.submit({"workers": 1, "timeout": 1, "item_list": {"items": [{"gate": "late"}], "batch_size": 1}})
    late = timed.json()["job_id"]
    assert timed.json()["timeout"] == 1
    assert batch.ended(late)["status"] == "status_timed_out"
    batch.release("late")


def test_workers_that_cannot_start_end_the_job_as_a_worker_error(batch: Batch) -> None:
    job_id = batch.submit({"workers": 1, "item_list": {"items": [1], "batch_size": 1}}, api="broken").json()["job_id"]
    status = batch.ended(job_id, api="broken")
    assert status["status"] == "status_worker_error"
    assert "keep failing" in status["message"]
    logs = list((batch.root / ".stack" / "logs").glob(f"broken-{job_id}-w*.log"))
    assert logs and "this model cannot load" in logs[0].read_text()


def test_s3_file_lists_and_delimited_files(batch: Batch, s3: dict[str, str]) -> None:
    """moto's S3 server; the supervisor was started before the fixture, so it is started again with the env."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="data")
    for name in ("img_1.png", "img_2.jpg", "img_3.jpg", "img_4.gif"):
        client.put_object(Bucket="data", Key=f"images/{name}", Body=b"x")
    lines = "\n".join(json.dumps({"row": i}) for i in range(7))
    client.put_object(Bucket="data", Key="rows/part-1.jsonl", Body=lines.encode())
    client.put_object(Bucket="data", Key="rows/part-2.jsonl", Body=b'{"row": 7}\n\n{"row": 8}\n')
    stack("down", "--local", str(batch.root), cwd=batch.root)
    batch.up()  # inherits AWS_ENDPOINT_URL and the credentials from this process

    listed = batch.submit(
        {
            "workers": 2,
            "file_path_lister": {
                "s3_paths": ["s3://data/images/"],
                "includes": ["**.jpg", "**.png"],
                "excludes": ["**_3.jpg"],
                "batch_size": 1,
            },
        }
    ).json()
    assert listed["file_path_lister"]["s3_paths"] == ["s3://data/images/"]
    assert batch.ended(listed["job_id"])["status"] == "status_succeeded"
    paths = sorted(i for r in batch.results(listed["job_id"]) for i in r["items"])
    assert paths == ["s3://data/images/img_1.png", "s3://data/images/img_2.jpg"]

    rows = batch.submit({"workers": 1, "delimited_files": {"s3_paths": ["s3://data/rows/"], "batch_size": 4}}).json()
    status = batch.ended(rows["job_id"])
    assert status["status"] == "status_succeeded" and status["total_batch_count"] == 3
    assert sorted(i["row"] for r in batch.results(rows["job_id"]) for i in r["items"]) == list(range(9))

    nothing = batch.submit({"workers": 1, "file_path_lister": {"s3_paths": ["s3://data/none/"], "batch_size": 1}})
    assert batch.ended(nothing.json()["job_id"])["status"] == "status_enqueue_failed"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


CORTEX_STYLE_ONNX_BATCH = '''
import json, os, re
import boto3
import numpy as np


class ONNXPredictor:
    """The shape of Cortex's test/batch/onnx predictor: inputs from S3, the batch through onnx_client,
    results to the job's dest_s3_dir, aggregated by on_job_complete (Cortex's image-classifier)."""

    def __init__(self, onnx_client, config, job_spec):
        self.client = onnx_client
        if len(config.get("dest_s3_dir", "")) == 0:
            raise Exception("'dest_s3_dir' field was not provided in job submission")
        self.s3 = boto3.client("s3")
        self.bucket, self.key = re.match("s3://(.+?)/(.+)", config["dest_s3_dir"]).groups()
        self.key = os.path.join(self.key, job_spec["job_id"])

    def predict(self, payload, batch_id):
        rows = []
        for url in payload:
            bucket, key = re.match("s3://(.+?)/(.+)", url).groups()
            rows.append(json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        result = self.client.predict(np.array(rows, dtype=np.float32))
        results = [{"url": payload[i], "class": int(c)} for i, c in enumerate(result[0])]
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.key}/{batch_id}.json", Body=json.dumps(results))

    def on_job_complete(self):
        everything = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key):
            for obj in page["Contents"]:
                everything += json.loads(self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read())
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.key}/aggregated_results.json", Body=json.dumps(everything))
'''


def test_a_cortex_style_onnx_batch_job_from_s3_to_s3(tmp_path: Path, s3: dict[str, str]) -> None:
    pytest.importorskip("onnxruntime", reason="pip install 'stack-serve[cortex]'")
    import boto3
    from model_files import iris_like_onnx

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="inputs")
    client.create_bucket(Bucket="results")
    rows = {f"rows/{i}.json": [float(i % 3 == 0), float(i % 3 == 1), float(i % 3 == 2), 0.0] for i in range(7)}
    for key, row in rows.items():
        client.put_object(Bucket="inputs", Key=key, Body=json.dumps(row).encode())
    iris_like_onnx(tmp_path / "model" / "model.onnx")
    (tmp_path / "predictor.py").write_text(CORTEX_STYLE_ONNX_BATCH)
    port = free_port()
    (tmp_path / "stack.yaml").write_text(
        f"project: onnxbatch\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\napis:\n"
        "  - name: classifier\n    kind: BatchAPI\n    predictor:\n      type: onnx\n      path: predictor.py\n"
        "      models: {path: model}\n"
    )
    stack("up", "--local", str(tmp_path), cwd=tmp_path)
    try:
        batch = Batch(tmp_path, port, tmp_path)
        body = {
            "workers": 2,
            "file_path_lister": {"s3_paths": ["s3://inputs/rows/"], "batch_size": 3},
            "config": {"dest_s3_dir": "s3://results/classified"},
        }
        job_id = batch.submit(body, api="classifier").json()["job_id"]
        status = batch.ended(job_id, api="classifier")
        assert status["status"] == "status_succeeded", status
        assert status["total_batch_count"] == 3
        listed = client.list_objects_v2(Bucket="results", Prefix=f"classified/{job_id}/")["Contents"]
        assert len(listed) == 4  # one file per batch, and the aggregate
        aggregate = client.get_object(Bucket="results", Key=f"classified/{job_id}/aggregated_results.json")
        classes = {r["url"]: r["class"] for r in json.loads(aggregate["Body"].read())}
        assert classes == {f"s3://inputs/{key}": i % 3 for i, key in enumerate(rows)}
        # Without dest_s3_dir __init__ raises, as Cortex's does: the workers cannot start.
        bad = batch.submit({"workers": 1, "item_list": {"items": ["x"], "batch_size": 1}}, api="classifier")
        assert batch.ended(bad.json()["job_id"], api="classifier")["status"] == "status_worker_error"
    finally:
        stack("down", "--local", str(tmp_path), cwd=tmp_path, check=False)
