"""What a Cortex user met that Cortex did otherwise (issue: Cortex parity, part 3): starlette's header
methods, a model client with no models refused at start, the same max_concurrency everywhere, and
`stack serve` saying when requirements.txt or a GPU is missing here."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path

import pytest
from model_files import iris_like_onnx

from serving.config import ServingConfig
from serving.loader import StartupError, load_predictor
from stack.cli.preflight import serve_warnings, unmet_requirements
from stack.spec import load_spec

HEADERS_PREDICTOR = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload, headers):
        return {
            "first": headers["x-multi"],
            "all": headers.getlist("X-Multi"),
            "raw": [[k.decode(), v.decode()] for k, v in headers.raw if k == b"x-multi"],
            "has": "X-MULTI" in headers,
            "aiohttp": headers.getall("x-multi"),
            "missing": headers.getlist("x-none"),
        }
"""


def test_headers_behave_as_starlettes(inproc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    predictor = tmp_path / "headers.py"
    predictor.write_text(HEADERS_PREDICTOR)
    server = inproc(predictor)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("X-Multi", "one")
    connection.putheader("X-Multi", "two")
    connection.putheader("Content-Length", "2")
    connection.endheaders(b"{}")
    try:
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert answer == {
        "first": "one",
        "all": ["one", "two"],
        "raw": [["x-multi", "one"], ["x-multi", "two"]],
        "has": True,
        "aiohttp": ["one", "two"],
        "missing": [],
    }


@pytest.mark.parametrize(("client", "field"), [("onnx_client", "models"), ("python_client", "multi_model_reloading")])
def test_a_model_client_without_models_is_refused_at_start(tmp_path: Path, client: str, field: str) -> None:
    predictor = tmp_path / "needs_models.py"
    predictor.write_text(
        f"class Predictor:\n    def __init__(self, {client}, config):\n        self.client = {client}\n\n"
        "    def predict(self, payload):\n        return self.client.predict(payload)\n\n"
        "    def load_model(self, model_path):\n        return None\n"
    )
    with pytest.raises(StartupError) as refused:
        load_predictor(predictor)
    assert f"takes {client}, but the API serves no models: set predictor.{field}" in str(refused.value)


def test_max_concurrency_is_the_same_under_stack_serve_and_stack_yaml(tmp_path: Path) -> None:
    (tmp_path / "predictor.py").write_text("class Predictor:\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "stack.yaml").write_text("project: same\napis:\n  - name: api\n    predictor: {path: predictor.py}\n")
    from stack.plan.serving import replica_config

    loaded = load_spec(tmp_path)
    assert ServingConfig(predictor_path="predictor.py").max_concurrency == 100  # `stack serve predictor.py`
    assert replica_config(loaded, loaded.spec.apis[0]).max_concurrency == 100


def test_stack_serve_says_what_this_environment_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "predictor.py").write_text("class Predictor:\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "requirements.txt").write_text(
        "# Cortex's examples pin old versions\nscikit-learn==0.21.3\nno-such-package-here>=1\n"
        "pyyaml>=5  # satisfied\nsomething; python_version < '3.0'\n--index-url https://example.invalid\n"
    )
    (tmp_path / "stack.yaml").write_text(
        "project: lacks\napis:\n  - name: api\n    predictor: {path: predictor.py}\n    compute: {gpu: 1}\n"
    )
    # A host without a GPU: nvidia-smi is there but finds none (exits non-zero, as without a driver).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    unmet = unmet_requirements(tmp_path / "requirements.txt")
    assert (
        unmet[0].startswith("scikit-learn==0.21.3 (installed: ") or unmet[0] == "scikit-learn==0.21.3 (not installed)"
    )
    assert unmet[1:] == ["no-such-package-here>=1 (not installed)"]
    loaded = load_spec(tmp_path)
    said = serve_warnings(loaded, loaded.spec.apis[0])
    assert "requirements.txt asks for scikit-learn==0.21.3" in said[0] and "pip install -r" in said[0]
    assert said[1] == (
        "API api asks for compute.gpu 1, but this host shows no GPU (nvidia-smi finds none): it serves on the CPU"
    )


CORTEX_IRIS_ONNX_PREDICTOR = """labels = ["setosa", "versicolor", "virginica"]


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        model_input = [
            payload["sepal_length"],
            payload["sepal_width"],
            payload["petal_length"],
            payload["petal_width"],
        ]

        prediction = self.client.predict(model_input)
        predicted_class_id = prediction[0][0]
        return labels[predicted_class_id]
"""


def test_onnx_client_converts_json_to_the_models_input_type_and_shape(inproc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Cortex's own iris ONNX predictor hands a flat list of 4 numbers; Cortex made it float32 [1, 4]."""
    pytest.importorskip("onnx", reason="pip install onnx onnxruntime (the cortex extra)")
    pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime (the cortex extra)")
    iris_like_onnx(tmp_path / "iris" / "model.onnx")  # no version directory: version 1
    predictor = tmp_path / "predictor.py"
    predictor.write_text(CORTEX_IRIS_ONNX_PREDICTOR)
    server = inproc(predictor, predictor_type="onnx", models={"path": "iris"}, project_root=str(tmp_path))
    sample = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
    answer = server.post(json=sample)
    assert answer.status_code == 200 and answer.text == "setosa"
    assert server.post(json={**sample, "petal_length": 9.0}).text == "virginica"
    wrong = server.post(json={**sample, "sepal_length": "five"})  # not a number: the caller's fault
    assert wrong.status_code == 400
    assert "float_input" in wrong.json()["error"]


def test_stack_import_turns_a_traffic_splitter_into_a_splitter(tmp_path: Path) -> None:
    """Cortex's test/traffic-splitter/cortex.yaml, as it is."""
    from stack.cli.cortex_import import import_file

    (tmp_path / "onnx_predictor.py").write_text(
        "class ONNXPredictor:\n    def predict(self, payload):\n        return 1\n"
    )
    (tmp_path / "pytorch_predictor.py").write_text(
        "class PythonPredictor:\n    def predict(self, payload):\n        return 2\n"
    )
    (tmp_path / "iris").mkdir()
    (tmp_path / "cortex.yaml").write_text(
        "- name: iris-classifier-pytorch\n  kind: RealtimeAPI\n  predictor:\n    type: python\n"
        "    path: pytorch_predictor.py\n    config:\n      model: s3://cortex-examples/pytorch/iris-classifier/weights.pth\n"
        "  monitoring:\n    model_type: classification\n\n"
        "- name: iris-classifier-onnx\n  kind: RealtimeAPI\n  predictor:\n    type: python\n"
        "    path: onnx_predictor.py\n  monitoring:\n    model_type: classification\n\n"
        "- name: iris-classifier\n  kind: TrafficSplitter\n  networking: {endpoint: iris}\n  apis:\n"
        "    - name: iris-classifier-onnx\n      weight: 30\n    - name: iris-classifier-pytorch\n      weight: 70\n"
    )
    imported = import_file(tmp_path / "cortex.yaml", tmp_path / "stack.yaml", None, force=False)
    assert not any("TrafficSplitter" in d for d in imported.dropped)
    spec = load_spec(tmp_path).spec
    assert [a.name for a in spec.apis] == ["iris-classifier-pytorch", "iris-classifier-onnx"]
    (splitter,) = spec.splitters
    assert splitter.name == "iris-classifier" and splitter.endpoint == "/iris"
    assert [(m.name, m.weight) for m in splitter.apis] == [
        ("iris-classifier-onnx", 30),
        ("iris-classifier-pytorch", 70),
    ]


CORTEX_TF_PREDICTOR = """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        version = query_params.get("version", "latest")
        return self.client.predict(payload["x"], "doubler", version)
"""


def _saved_model(path: Path, scale: float) -> None:
    import tensorflow as tf

    class Scale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            return {"y": x * scale}

    module = Scale()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_tensorflow_client_serves_savedmodels_in_process(inproc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorflow", reason="pip install tensorflow-cpu (the tensorflow extra; CI installs it)")
    _saved_model(tmp_path / "models" / "doubler" / "1", 2.0)
    _saved_model(tmp_path / "models" / "doubler" / "2", 3.0)
    predictor = tmp_path / "predictor.py"
    predictor.write_text(CORTEX_TF_PREDICTOR)
    server = inproc(
        predictor,
        predictor_type="tensorflow",
        models={"paths": [{"name": "doubler", "path": "models/doubler"}]},
        project_root=str(tmp_path),
    )
    assert server.post(json={"x": [[1, 2]]}).json() == {"y": [3.0, 6.0]}  # latest: version 2, flat as Cortex
    assert server.post(json={"x": [[1, 2]]}, params={"version": "1"}).json() == {"y": [2.0, 4.0]}
    wrong = server.post(json={"x": [[1, 2, 3]]})  # the signature takes [None, 2]
    assert wrong.status_code == 400 and "does not fit the model" in wrong.json()["error"]


def test_tensorflow_type_without_tensorflow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from serving.models import ModelsConfig, ModelStore, TensorFlowClient

    (tmp_path / "m" / "1").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as on a host without it
    store = ModelStore(ModelsConfig.from_dict({"path": "m"}), tmp_path)
    try:
        with pytest.raises(StartupError, match=r"add tensorflow-cpu .* to requirements.txt"):
            TensorFlowClient(store)
    finally:
        store.close()
    (tmp_path / "stack.yaml").write_text(
        "project: tf\napis:\n  - name: a\n    predictor: {type: tensorflow, path: p.py, models: {path: m}}\n"
    )
    (tmp_path / "p.py").write_text(CORTEX_TF_PREDICTOR)
    from stack.plan.serving import extra_requirements

    assert "tensorflow-cpu" in extra_requirements(load_spec(tmp_path).spec.apis[0])  # images get it


# The signatures of Cortex v0.25's TensorFlow examples, with their predictors as Cortex shipped them.
IRIS_TF_PREDICTOR = """
labels = ["setosa", "versicolor", "virginica"]


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        model = query_params.get("model")
        if model:  # the multi-model example: one client, several models by name
            prediction = self.client.predict(payload, model)
        else:
            prediction = self.client.predict(payload)
        predicted_class_id = int(prediction["class_ids"][0])
        return {"label": labels[predicted_class_id], "raw": prediction}
"""

RANKING_TF_PREDICTOR = """
import numpy as np


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload):
        output = self.client.predict({"image": payload["image"]}, "ranker")
        return {"top": np.argsort(output["scores"])[::-1][:2].tolist(), "name": output["name"]}
"""


def _iris_saved_model(path: Path) -> None:
    """The iris estimator's serving signature: four `[None]` float32 features, `class_ids` int64
    `[None, 1]`, `probabilities` float32 `[None, 3]`."""
    import tensorflow as tf

    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

    class Iris(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=n) for n in features])
        def serve(self, sepal_length, sepal_width, petal_length, petal_width):  # type: ignore[no-untyped-def]
            # petal length decides, as it nearly does for the real flowers
            logits = tf.stack([2.5 - petal_length, 2.0 - tf.abs(petal_length - 4.3), petal_length - 5.0], axis=1)
            return {
                "class_ids": tf.expand_dims(tf.argmax(logits, axis=1), 1),
                "probabilities": tf.nn.softmax(logits),
            }

    module = Iris()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _ranking_saved_model(path: Path) -> None:
    """An image-classifier-like signature: a `[None, 2, 2]` image in, `[None, 4]` scores and a string out."""
    import tensorflow as tf

    class Ranker(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2, 2], tf.float32, name="image")])
        def serve(self, image):  # type: ignore[no-untyped-def]
            return {"scores": tf.reshape(image, [-1, 4]), "name": tf.constant([b"ranker"])}

    module = Ranker()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_cortex_tensorflow_examples_run_unmodified(inproc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorflow", reason="pip install tensorflow-cpu (the tensorflow extra; CI installs it)")
    _iris_saved_model(tmp_path / "iris" / "1")
    (tmp_path / "iris.py").write_text(IRIS_TF_PREDICTOR)
    iris = inproc(
        tmp_path / "iris.py",
        predictor_type="tensorflow",
        models={"path": "iris"},
        project_root=str(tmp_path),
    )
    flower = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}  # sample.json
    answer = iris.post(json=flower).json()
    assert answer["label"] == "setosa"
    assert answer["raw"]["class_ids"] == ["0"]  # int64 as TF Serving's JSON wrote it
    assert len(answer["raw"]["probabilities"]) == 3 and answer["raw"]["probabilities"][0] > 0.5
    assert iris.post(json={**flower, "petal_length": 6.1}).json()["label"] == "virginica"
    missing = iris.post(json={"sepal_length": 5.2})
    assert missing.status_code == 400 and "petal_length" in missing.json()["error"]
    words = iris.post(json={**flower, "petal_width": "wide"})
    assert words.status_code == 400 and "does not fit the model" in words.json()["error"]

    # the multi-model layout: several SavedModels by name, chosen per request
    _iris_saved_model(tmp_path / "many" / "iris" / "1")
    _ranking_saved_model(tmp_path / "many" / "ranker" / "1")
    (tmp_path / "ranking.py").write_text(RANKING_TF_PREDICTOR)
    many = inproc(
        tmp_path / "iris.py",
        predictor_type="tensorflow",
        models={"dir": "many"},
        project_root=str(tmp_path),
    )
    assert many.post(json=flower, params={"model": "iris"}).json()["label"] == "setosa"
    ranking = inproc(
        tmp_path / "ranking.py",
        predictor_type="tensorflow",
        models={"dir": "many"},
        project_root=str(tmp_path),
    )
    # a flat image is reshaped to the declared [None, 2, 2]; scores come back flat for np.argsort
    ranked = ranking.post(json={"image": [0.1, 0.9, 0.3, 0.7]}).json()
    assert ranked == {"top": [1, 3], "name": [base64.b64encode(b"ranker").decode()]}
