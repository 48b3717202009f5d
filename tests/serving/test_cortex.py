"""Cortex v0.25 parity: Cortex-style predictors run unmodified, with python_client / onnx_client models.

Predictors are written here as Cortex's docs write them. Models live in local
directories, or on a real S3-compatible server (moto's) started by the tests,
and an ONNX model is built with onnx.helper.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from common import free_port
from model_files import MULTI_MODEL, write
from waits import until

STACK = [sys.executable, "-m", "stack.cli"]


def test_the_class_defined_in_the_file_is_served_not_an_imported_one(inproc, tmp_path: Path) -> None:
    write(tmp_path / "helpers.py", "class Predictor:\n    def predict(self):\n        return 'imported'\n")
    cortex = write(
        tmp_path / "cortex_predictor.py",
        "from helpers import Predictor\n"
        "class PythonPredictor:\n"
        "    def __init__(self, config, job_spec):\n"
        "        self.seen = (config, job_spec)\n"
        "    def predict(self, payload, query_params, headers, batch_id):\n"
        "        return {'class': type(self).__name__, 'batch_id': batch_id, 'init': list(map(repr, self.seen))}\n",
    )
    server = inproc(cortex, config={"k": 1})
    assert server.post(json={}).json() == {
        "class": "PythonPredictor",
        "batch_id": None,
        "init": ["{'k': 1}", "None"],  # realtime: job_spec None
    }
    assert server.post("/predict", json={}).json()["class"] == "PythonPredictor"  # Cortex's in-cluster route


def test_several_candidate_classes_or_an_unknown_init_argument_stop_the_start(tmp_path: Path) -> None:
    from serving.loader import StartupError, load_predictor

    two = write(
        tmp_path / "two.py",
        "class PythonPredictor:\n    def predict(self):\n        return 1\n"
        "class Predictor:\n    def predict(self):\n        return 2\n",
    )
    with pytest.raises(StartupError, match="several predictor classes \\(PythonPredictor, Predictor\\)"):
        load_predictor(two)
    odd = write(
        tmp_path / "odd.py",
        "class PythonPredictor:\n    def __init__(self, config, tokenizer):\n        pass\n"
        "    def predict(self):\n        return 1\n",
    )
    with pytest.raises(
        StartupError, match=r"odd\.py:2: PythonPredictor.__init__\(\) has unknown parameter 'tokenizer'"
    ):
        load_predictor(odd)


def test_init_runs_on_the_predict_thread(inproc, tmp_path: Path) -> None:
    predictor = write(
        tmp_path / "threads.py",
        "import threading\n"
        "class PythonPredictor:\n"
        "    def __init__(self, config):\n"
        "        self.init_thread = threading.get_ident()\n"
        "    def predict(self):\n"
        "        return threading.get_ident() == self.init_thread\n",
    )
    server = inproc(predictor, threads_per_process=1)
    assert server.post(json={}).json() is True  # thread-affine libraries (TF sessions) need this


def test_starlette_responses_query_lists_and_uploads(inproc, tmp_path: Path) -> None:
    if importlib.util.find_spec("starlette") is None:
        pytest.skip("starlette is not installed: pip install starlette")
    predictor = write(
        tmp_path / "starlette_predictor.py",
        "from starlette.responses import JSONResponse, PlainTextResponse, Response\n"
        "class PythonPredictor:\n"
        "    def __init__(self, config):\n"
        "        pass\n"
        "    def predict(self, payload, query_params):\n"
        "        kind = query_params.get('kind')\n"
        "        if kind == 'json':\n"
        "            tags = query_params.getlist('tag')\n"
        "            return JSONResponse({'tags': tags}, status_code=201, headers={'X-A': 'b'})\n"
        "        if kind == 'text':\n"
        "            return PlainTextResponse('teapot', status_code=418)\n"
        "        if kind == 'raw':\n"
        "            return Response(content=b'\\x00\\x01', media_type='application/x-thing')\n"
        "        upload = payload['file']\n"
        "        via_file, via_read = upload.file.read().decode(), upload.read().decode()\n"
        "        return {'name': upload.filename, 'via_file': via_file, 'via_read': via_read}\n",
    )
    server = inproc(predictor)
    json_reply = server.post(params=[("kind", "json"), ("tag", "a"), ("tag", "b")], json={})
    assert (json_reply.status_code, json_reply.json(), json_reply.headers["X-A"]) == (201, {"tags": ["a", "b"]}, "b")
    text = server.post(params={"kind": "text"}, json={})
    assert (text.status_code, text.text, text.headers["Content-Type"]) == (418, "teapot", "text/plain; charset=utf-8")
    raw = server.post(params={"kind": "raw"}, json={})
    assert (raw.content, raw.headers["Content-Type"]) == (b"\x00\x01", "application/x-thing")
    upload = server.post(files={"file": ("notes.txt", b"hello", "text/plain")})
    assert upload.json() == {"name": "notes.txt", "via_file": "hello", "via_read": "hello"}


def model_dir(root: Path, name: str, version: int | None, weights: str) -> None:
    base = root / "models" / name / (str(version) if version is not None else "")
    write(base / "weights.txt", weights)


def test_multi_model_versions_cache_and_live_reloading(inproc, tmp_path: Path) -> None:
    model_dir(tmp_path, "iris", 1, "iris-v1")
    model_dir(tmp_path, "iris", 2, "iris-v2")
    model_dir(tmp_path, "wine", None, "wine")  # no version directories: one version, 1 (as Cortex numbers it)
    model_dir(tmp_path, "broken", 1, "corrupt")
    predictor = write(tmp_path / "predictor.py", MULTI_MODEL)
    server = inproc(
        predictor,
        threads_per_process=8,
        models={"dir": "models", "cache_size": 2, "poll_interval": 0.1},
        project_root=str(tmp_path),
    )
    get = lambda **q: server.post(params=q)  # noqa: E731
    assert get(model="iris").json() == {"model": "iris", "weights": "iris-v2"}  # latest: the highest version
    assert get(model="iris", version="1").json()["weights"] == "iris-v1"
    unknown = get(model="gpt")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "model 'gpt' not found; available: broken, iris, wine"
    no_version = get(model="iris", version="7")
    assert (no_version.status_code, no_version.json()["error"]) == (
        404,
        "model 'iris' has no version 7; versions: 1, 2",
    )
    broken = get(model="broken")
    assert broken.status_code == 500 and "model 'broken' version 1 failed to load" in broken.json()["error"]
    assert "weights are corrupt" in broken.json()["error"]
    assert get(model="wine").json()["weights"] == "wine"  # other models unaffected
    assert get(model="wine", version="1").json()["weights"] == "wine"

    # Concurrent first requests for one model load it once.
    loads_before = len(server.instance.loads)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: get(model="iris", version="2").json(), range(8)))
    assert {b["weights"] for b in bodies} == {"iris-v2"}
    assert [p for p in server.instance.loads[loads_before:] if p.endswith("/iris/2")] in (
        [],
        [str(tmp_path / "models/iris/2")],
    )

    # A new version is picked up without a restart, loaded off the request path.
    assert get(model="iris").json()["weights"] == "iris-v2"
    model_dir(tmp_path, "iris", 3, "iris-v3")
    until(lambda: get(model="iris").json()["weights"] == "iris-v3", "version 3 to be served as latest")
    # A removed model is gone.
    shutil.rmtree(tmp_path / "models" / "wine")
    until(lambda: get(model="wine").status_code == 404, "the removed model to be unloaded")

    status = server.get("/").json()
    assert status["models"]["iris"]["versions"] == ["1", "2", "3"] and status["models"]["iris"]["latest"] == "3"
    metrics = server.get("/metrics").text
    assert 'predictor_model_cache_total{api="test",result="hit"}' in metrics
    assert 'predictor_model_cache_total{api="test",result="eviction"}' in metrics  # cache_size 2
    assert "predictor_model_load_duration_seconds_count" in metrics and "predictor_models_loaded" in metrics


def test_models_on_s3_with_live_reloading(inproc, tmp_path: Path, s3: dict[str, str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="prod/iris/1/weights.txt", Body=b"s3-iris-v1")
    client.put_object(Bucket="models", Key="prod/wine/5/weights.txt", Body=b"s3-wine-v5")
    predictor = write(tmp_path / "predictor.py", MULTI_MODEL)
    server = inproc(predictor, models={"dir": "s3://models/prod", "poll_interval": 0.1, "disk_cache_size": 2})
    assert server.post(params={"model": "iris"}).json()["weights"] == "s3-iris-v1"
    assert server.post(params={"model": "wine", "version": "5"}).json()["weights"] == "s3-wine-v5"
    client.put_object(Bucket="models", Key="prod/iris/2/weights.txt", Body=b"s3-iris-v2")
    until(lambda: server.post(params={"model": "iris"}).json()["weights"] == "s3-iris-v2", "the new version on S3")
    # Overwritten in place (same version, new bytes): reloaded, as Cortex does; the other model stays as it was.
    client.put_object(Bucket="models", Key="prod/iris/2/weights.txt", Body=b"s3-iris-v2-retrained")
    until(
        lambda: server.post(params={"model": "iris", "version": "2"}).json()["weights"] == "s3-iris-v2-retrained",
        "the overwritten version on S3",
    )
    assert server.post(params={"model": "iris"}).json()["weights"] == "s3-iris-v2-retrained"
    assert server.post(params={"model": "wine", "version": "5"}).json()["weights"] == "s3-wine-v5"
    assert server.get("/").json()["models"]["iris"]["loaded"] == ["2"]  # one copy, replaced in place


def test_a_version_overwritten_on_disk_is_reloaded(inproc, tmp_path: Path) -> None:
    model_dir(tmp_path, "iris", None, "iris-a")
    predictor = write(tmp_path / "predictor.py", MULTI_MODEL)
    server = inproc(predictor, models={"path": "models/iris", "poll_interval": 0.1}, project_root=str(tmp_path))
    assert server.post().json()["weights"] == "iris-a"
    staged = tmp_path / "models" / "iris" / "weights.txt.new"
    staged.write_text("iris-bb")  # a different size, so the change shows whatever the file system's mtime step
    staged.replace(tmp_path / "models" / "iris" / "weights.txt")
    until(lambda: server.post().json()["weights"] == "iris-bb", "the overwritten model")


def _onnx_model(path: Path, scale: float) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [1], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_onnx_predictor_with_onnx_client(inproc, tmp_path: Path) -> None:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnx and onnxruntime are missing: pip install onnx onnxruntime")
    _onnx_model(tmp_path / "doubler" / "1" / "model.onnx", 2.0)
    predictor = write(
        tmp_path / "onnx_predictor.py",
        "import numpy as np\n"
        "class ONNXPredictor:\n"
        "    def __init__(self, onnx_client, config):\n"
        "        self.client = onnx_client\n"
        "    def predict(self, payload):\n"
        "        x = np.array(payload['x'], dtype=np.float32)\n"
        "        return {'y': self.client.predict(x)[0].tolist()}\n",
    )
    server = inproc(
        predictor, predictor_type="onnx", models={"path": "doubler", "poll_interval": 0.1}, project_root=str(tmp_path)
    )
    assert server.post(json={"x": [[1, 2]]}).json() == {"y": [[2.0, 4.0]]}
    _onnx_model(tmp_path / "doubler" / "2" / "model.onnx", 3.0)
    until(lambda: server.post(json={"x": [[1, 2]]}).json() == {"y": [[3.0, 6.0]]}, "ONNX version 2")


def test_monitoring_counts_predicted_classes(inproc, tmp_path: Path) -> None:
    predictor = write(
        tmp_path / "classify.py",
        "class PythonPredictor:\n    def __init__(self, config):\n        pass\n"
        "    def predict(self, payload):\n        return {'label': payload['label'], 'p': 0.9}\n",
    )
    server = inproc(predictor, monitoring={"model_type": "classification", "key": "label"})
    for label in ("cat", "cat", "dog"):
        server.post(json={"label": label})
    metrics = server.get("/metrics").text
    assert 'predictor_predicted_class_total{api="test",class="cat"} 2.0' in metrics
    assert 'predictor_predicted_class_total{api="test",class="dog"} 1.0' in metrics


CORTEX_YAML = """\
- name: iris-classifier
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    python_path: lib
    image: quay.io/cortexlabs/python-predictor-cpu:0.25.0
    server_side_batching: {max_batch_size: 8, batch_interval: 100ms}
    threads_per_process: 8
    multi_model_reloading:
      dir: models
      cache_size: 2
  networking: {endpoint: iris, api_gateway: public}
  compute: {cpu: 200m, mem: 512Mi, inf: 0}
  autoscaling: {min_replicas: 1, max_replicas: 4, max_replica_concurrency: 64, window: 1m30s}
  update_strategy: {max_surge: 1, max_unavailable: 0}
  monitoring: {model_type: classification, key: label}
- name: trainer
  kind: BatchAPI
  predictor: {type: python, path: predictor.py}
"""


def test_stack_import_converts_a_cortex_file(tmp_path: Path) -> None:
    write(tmp_path / "cortex.yaml", CORTEX_YAML)
    write(tmp_path / "predictor.py", MULTI_MODEL)
    (tmp_path / "lib").mkdir()
    model_dir(tmp_path, "iris", 1, "w")
    result = subprocess.run([*STACK, "import", str(tmp_path / "cortex.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"wrote {tmp_path / 'stack.yaml'} (2 API(s))" in out
    for dropped in (
        "apis[0].kind",
        "apis[0].predictor.image",
        "apis[0].networking.api_gateway",
        "apis[0].compute.inf",
    ):
        assert f"dropped {dropped}" in out, out
    from stack.spec import load_spec

    spec = load_spec(tmp_path).spec
    assert [b.name for b in spec.batch_apis] == ["trainer"]  # a BatchAPI stays one
    assert "trainer" not in out
    api = spec.apis[0]
    assert api.predictor.batching is not None and api.predictor.batching.max_batch_size == 8
    assert api.predictor.max_concurrency == 64 and api.predictor.python_path == ["lib"]
    assert api.autoscaling.window == 90.0 and api.update.max_surge == 1 and api.endpoint == "/iris"
    assert api.monitoring is not None and api.monitoring.key == "label"
    assert api.predictor.multi_model_reloading is not None and api.predictor.multi_model_reloading.cache_size == 2
    again = subprocess.run([*STACK, "import", str(tmp_path / "cortex.yaml")], capture_output=True, text=True)
    assert again.returncode == 1 and "exists; pass -o OTHER.yaml, or --force" in again.stderr


def test_tensorflow_needs_models(tmp_path: Path) -> None:
    write(tmp_path / "p.py", "class PythonPredictor:\n    def predict(self):\n        return 1\n")
    write(tmp_path / "stack.yaml", "project: tf\napis:\n  - name: a\n    predictor: {type: tensorflow, path: p.py}\n")
    result = subprocess.run([*STACK, "validate", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "type tensorflow needs `models`" in result.stderr


def test_a_cortex_multi_model_api_through_stack_up_local(tmp_path: Path) -> None:
    model_dir(tmp_path, "iris", 1, "iris-v1")
    write(tmp_path / "predictor.py", MULTI_MODEL)
    port = free_port()
    write(
        tmp_path / "stack.yaml",
        f"project: cortexlocal\ngateway: {{port: {port}}}\nprometheus: {{enabled: false}}\napis:\n"
        "  - name: models\n    predictor:\n      path: predictor.py\n"
        "      multi_model_reloading: {dir: models, poll_interval: 200ms}\n"
        "    autoscaling: {min_replicas: 1, max_replicas: 1}\n",
    )
    try:
        subprocess.run(
            [*STACK, "up", "--local", str(tmp_path)], capture_output=True, text=True, check=True, timeout=180
        )
        url = f"http://127.0.0.1:{port}/models/predict"  # Cortex's route, through the gateway
        assert requests.post(url, params={"model": "iris"}, timeout=10).json()["weights"] == "iris-v1"
        model_dir(tmp_path, "iris", 2, "iris-v2")
        until(
            lambda: requests.post(url, params={"model": "iris"}, timeout=10).json()["weights"] == "iris-v2",
            "the new version through the gateway",
        )
    finally:
        subprocess.run([*STACK, "down", "--local", str(tmp_path)], capture_output=True, timeout=120)


def test_latest_is_a_name_for_the_newest_version_not_a_second_copy(inproc, tmp_path: Path) -> None:
    model_dir(tmp_path, "iris", 1, "iris-v1")
    model_dir(tmp_path, "iris", 3, "iris-v3")
    predictor = write(tmp_path / "predictor.py", MULTI_MODEL)
    server = inproc(predictor, models={"dir": "models", "cache_size": 1}, project_root=str(tmp_path))
    get = lambda **q: server.post(params=q)  # noqa: E731
    assert get(model="iris", version="3").json()["weights"] == "iris-v3"
    assert get(model="iris").json()["weights"] == "iris-v3"  # latest: the same model in memory
    assert get(model="iris", version="latest").json()["weights"] == "iris-v3"
    assert [p for p in server.instance.loads if p.endswith("/iris/3")] == [str(tmp_path / "models/iris/3")]
    assert 'predictor_models_loaded{api="test"} 1.0' in server.get("/metrics").text
    assert server.get("/").json()["models"]["iris"]["loaded"] == ["3"]
