"""The protocols clients already speak, tested with their real clients: `openai` and `tritonclient[http]`,
plus every API's OpenAPI document checked by openapi-spec-validator."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from common import EXAMPLES, ServerFactory, free_port

STACK = [sys.executable, "-m", "stack.cli"]


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install -e '.[clients]'")


def chat_server(inproc):  # type: ignore[no-untyped-def]
    return inproc(EXAMPLES / "chat" / "predictor.py", api="chat", protocol="openai", config={"token_delay": 0})


def test_openai_client_whole_and_streamed(inproc) -> None:
    needs("openai")
    from openai import OpenAI

    server = chat_server(inproc)
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    whole = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello there"}])
    text = "Hello! I am a predictor served by stack, speaking OpenAI's protocol."
    assert whole.choices[0].message.content == text and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason == "stop" and whole.object == "chat.completion"
    assert whole.usage is not None and whole.usage.prompt_tokens == 2 and whole.usage.completion_tokens == 11
    assert whole.id.startswith("chatcmpl-") and whole.model == "chat" and whole.created > 0

    chunks = list(
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}], stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == "stop" and len({c.id for c in chunks}) == 1

    short = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=2)
    assert short.choices[0].message.content == "Hello! I" and short.choices[0].finish_reason == "length"

    completion = client.completions.create(model="chat", prompt="help")
    assert completion.choices[0].text.startswith("Ask me about stack") and completion.object == "text_completion"
    assert [m.id for m in client.models.list()] == ["chat"]


def test_openai_shaped_errors(inproc) -> None:
    needs("openai")
    import openai

    server = chat_server(inproc)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=[])
    assert "`messages` is required" in str(caught.value)
    raw = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 1}], "stream": "yes"})
    body = raw.json()
    assert raw.status_code == 400 and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "messages[0].content"
    broken = server.post("/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


def test_openai_through_stack_serve_and_the_local_gateway(servers: ServerFactory, tmp_path: Path) -> None:
    needs("openai")
    from openai import OpenAI

    project = tmp_path / "chat"
    shutil.copytree(EXAMPLES / "chat", project)
    served = servers.stack_serve(project)
    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "name?"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "I am the chat example of stack."

    port = free_port()
    spec = (
        (project / "stack.yaml")
        .read_text()
        .replace("apis:", f"gateway: {{port: {port}}}\nprometheus: {{enabled: false}}\napis:")
    )
    (project / "stack.yaml").write_text(spec)
    try:
        subprocess.run([*STACK, "up", "--local", str(project)], capture_output=True, text=True, check=True, timeout=180)
        gateway = OpenAI(base_url=f"http://127.0.0.1:{port}/chat/v1", api_key="unused", max_retries=0)
        answer = gateway.chat.completions.create(model="chat", messages=[{"role": "user", "content": "help"}])
        assert answer.choices[0].message.content.startswith("Ask me about stack")
        assert _streamed_through_traefik(gateway, "hi").startswith("I only know")
    finally:
        subprocess.run([*STACK, "down", "--local", str(project)], capture_output=True, timeout=120)


def _streamed_through_traefik(client: Any, content: str) -> str:
    """A streamed chat answer through the gateway, tried a second time if Traefik cut the first one.

    Traefik (3.7) can cut a streamed answer to a request with a body when its CPU is starved: Go's
    HTTP/1 server closes the request body as the answer starts while the proxy still reads it to its
    end, and the proxy then drops the replica's connection (traefik/traefik#11767, golang/go#40747;
    README "Troubleshooting"). A client tries again, as this does once; a second cut fails the test.
    """
    import openai

    def once() -> str:
        chunks = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": content}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    try:
        return once()
    except openai.APIConnectionError:
        return once()


def test_tritonclient_infers_over_the_open_inference_protocol(inproc) -> None:
    needs("tritonclient", "numpy")
    import numpy as np
    import tritonclient.http as http

    server = inproc(EXAMPLES / "tensors" / "predictor.py", api="tensors", protocol="v2", config={"scale": 3})
    client = http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tensors")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = http.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("tensors", [tensor])
    assert np.array_equal(result.as_numpy("scaled"), x * 3)
    assert np.array_equal(result.as_numpy("row_sum"), x.sum(axis=1))
    client.close()

    bad_type = server.post(
        "/v2/models/tensors/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}
    )
    assert bad_type.status_code == 400 and "unknown datatype 'FP8'" in bad_type.json()["error"]
    bad_shape = server.post(
        "/v2/models/tensors/infer",
        json={"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]},
    )
    assert (
        bad_shape.status_code == 400
        and bad_shape.json()["error"] == "input 'x': shape [2, 2] needs 4 values, data has 3"
    )
    unknown = server.post("/v2/models/other/infer", json={"inputs": []})
    assert unknown.status_code == 404 and "unknown model 'other'" in unknown.json()["error"]


TYPED = """\
from pydantic import BaseModel, Field


class Flower(BaseModel):
    sepal_length: float = Field(gt=0)
    species_hint: str | None = None


class Answer(BaseModel):
    label: str


class Predictor:
    def predict(self, payload: Flower) -> Answer:
        return {"label": "big" if payload.sepal_length > 5 else "small"}
"""


def test_openapi_documents_validate_and_annotations_give_schemas_and_422(inproc, tmp_path: Path) -> None:
    needs("openapi_spec_validator", "pydantic")
    from openapi_spec_validator import validate

    typed = tmp_path / "typed.py"
    typed.write_text(TYPED)
    servers = [
        inproc(EXAMPLES / "echo" / "predictor.py", api="echo"),
        chat_server(inproc),
        inproc(typed, api="typed"),
    ]
    if importlib.util.find_spec("numpy"):
        servers.append(inproc(EXAMPLES / "tensors" / "predictor.py", api="tensors", protocol="v2"))
    for server in servers:
        document = server.get("/openapi.json").json()
        validate(document)  # raises on an invalid OpenAPI 3.1 document
        assert document["openapi"] == "3.1.0" and "/" in document["paths"]
    typed_server = servers[2]
    document = typed_server.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["Flower"]["properties"]["sepal_length"]["exclusiveMinimum"] == 0
    assert "label" in schemas["Answer"]["properties"]
    assert typed_server.post(json={"sepal_length": 6.1}).json() == {"label": "big"}
    invalid = typed_server.post(json={"sepal_length": -1})
    assert invalid.status_code == 422
    assert invalid.json()["error"] == "invalid payload: sepal_length: Input should be greater than 0"
    assert requests.get(f"{servers[1].url}/openapi.json", timeout=10).json()["paths"]["/v1/chat/completions"]


def test_openai_requests_are_batched_when_batching_is_on(inproc, tmp_path: Path) -> None:
    needs("openai")
    import concurrent.futures

    from openai import OpenAI

    batched = tmp_path / "batched.py"
    batched.write_text(
        "class Predictor:\n"
        "    def predict(self, payload):\n"
        "        return [f'{len(payload)} in batch: ' + body['messages'][-1]['content'] for body in payload]\n"
    )
    server = inproc(batched, protocol="openai", batching={"max_batch_size": 4, "batch_interval": 30.0})
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

    def ask(i: int) -> str:
        reply = client.chat.completions.create(model="test", messages=[{"role": "user", "content": f"q{i}"}])
        return reply.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == [f"4 in batch: q{i}" for i in range(4)]


def test_bytes_tensors_and_v2_through_the_gateway_path_prefix(inproc, tmp_path: Path) -> None:
    needs("numpy")
    words = tmp_path / "words.py"
    words.write_text(
        "import numpy as np\n"
        "class Predictor:\n"
        "    def predict(self, payload):\n"
        "        text = [w.decode().upper() for w in payload['text'].reshape(-1)]\n"
        "        return {'upper': np.array(text, dtype=object), 'ok': np.array([True])}\n"
    )
    server = inproc(words, api="words", protocol="v2")
    body = {"id": "r1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ab", "cd"]}]}
    reply = server.post("/v2/models/words/infer", json=body).json()
    assert reply["id"] == "r1" and reply["model_name"] == "words"
    upper, ok = reply["outputs"]
    assert upper == {"name": "upper", "datatype": "BYTES", "shape": [2], "data": ["AB", "CD"]}
    assert ok == {"name": "ok", "datatype": "BOOL", "shape": [1], "data": [True]}


def test_a_typeddict_payload_is_validated(inproc, tmp_path: Path) -> None:
    needs("pydantic")
    typed = tmp_path / "typed_dict.py"
    typed.write_text(
        "from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12\n"
        "class Query(TypedDict):\n"
        "    text: str\n"
        "    top_k: int\n"
        "class Predictor:\n"
        "    def predict(self, payload: Query):\n"
        "        return {'k': payload['top_k']}\n"
    )
    server = inproc(typed)
    assert server.post(json={"text": "a", "top_k": 3}).json() == {"k": 3}
    bad = server.post(json={"text": "a"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid payload: top_k: Field required"
    assert "Query" in server.get("/openapi.json").json()["components"]["schemas"]


def test_every_examples_openapi_document_is_valid(tmp_path: Path) -> None:
    needs("openapi_spec_validator")
    from openapi_spec_validator import validate

    from serving.openapi import openapi_document
    from stack.plan.serving import replica_config
    from stack.spec import load_spec

    documented = 0
    for spec_file in sorted(EXAMPLES.glob("*/stack.yaml")):
        loaded = load_spec(spec_file)
        for api in loaded.spec.apis:
            validate(openapi_document(replica_config(loaded, api), None))
            documented += 1
    assert documented >= 9
