"""The predictor contract over real HTTP: payloads in, responses out, errors.

The replica runs in this process (tests/inprocess.py): the real aiohttp app on
a real socket, without starting an interpreter per test.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from common import EXAMPLES, PREDICTORS
from inprocess import InProcessReplica
from waits import until


@pytest.fixture(scope="module")
def contract():
    server = InProcessReplica(PREDICTORS / "contract.py", config={"answer": 42}, threads_per_process=4)
    yield server
    server.close()


def test_json_payload_is_parsed(contract: InProcessReplica) -> None:
    response = contract.post(json={"a": [1, 2]}, params={"x": "1"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"type": "dict", "value": {"a": [1, 2]}, "query": {"x": "1"}}


def test_text_payload_honours_charset(contract: InProcessReplica) -> None:
    body = "café".encode("latin-1")
    response = contract.post(data=body, headers={"Content-Type": "text/plain; charset=latin-1"})
    assert response.json()["value"] == "café"
    assert response.json()["type"] == "str"


def test_urlencoded_form_fields(contract: InProcessReplica) -> None:
    response = contract.post(data={"name": "iris", "tag": ["a", "b"]})
    assert response.json()["value"] == {"name": "iris", "tag": ["a", "b"]}


def test_multipart_fields_and_files(contract: InProcessReplica) -> None:
    response = contract.post(files={"image": ("cat.png", b"\x89PNG" + b"x" * 100, "image/png")}, data={"note": "hi"})
    value = response.json()["value"]
    assert value["note"] == "hi"
    assert value["image"] == {"filename": "cat.png", "content_type": "image/png", "size": 104}


def test_other_content_types_arrive_as_bytes(contract: InProcessReplica) -> None:
    response = contract.post(data=b"\xff\x00abc", headers={"Content-Type": "application/octet-stream"})
    assert response.json() == {"type": "bytes", "value": {"length": 5, "first": "ff"}, "query": {}}


def test_no_body_is_none(contract: InProcessReplica) -> None:
    assert contract.post().json()["type"] == "NoneType"


@pytest.mark.parametrize(
    ("reply", "content_type", "body"),
    [
        ("text", "text/plain", b"plain text"),
        ("bytes", "application/octet-stream", b"\x00\x01\x02"),
        ("none", "application/json", b"null"),
        ("number", "application/json", b"42.5"),
    ],
)
def test_return_values_are_encoded(contract: InProcessReplica, reply: str, content_type: str, body: bytes) -> None:
    response = contract.post(params={"reply": reply})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(content_type)
    assert response.content == body


def test_aiohttp_response_passes_through(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "response"})
    assert (response.status_code, response.text, response.headers["X-Custom"]) == (201, "custom", "yes")
    assert response.headers["X-Request-ID"]


def test_headers_are_injected(contract: InProcessReplica) -> None:
    assert contract.post(params={"reply": "header"}, headers={"X-Custom": "v"}).json() == {"x_custom": "v"}


def test_config_reaches_init(contract: InProcessReplica) -> None:
    assert contract.post(params={"reply": "config"}).json() == {"answer": 42}


def test_request_id_is_kept_or_made(contract: InProcessReplica) -> None:
    kept = contract.post(json={}, headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    made = [contract.post(json={}).headers["X-Request-ID"] for _ in range(2)]
    assert made[0] != made[1] and all(re.fullmatch(r"[0-9a-f]{24}", rid) for rid in made)
    assert "request_id=abc-123" in contract.logs()


def test_malformed_json_is_400_naming_the_error(contract: InProcessReplica) -> None:
    response = contract.post(data=b'{"a": ', headers={"Content-Type": "application/json", "X-Request-ID": "r1"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "malformed JSON body: Expecting value: line 1 column 7 (char 6)",
        "request_id": "r1",
    }


def test_predictor_exception_is_500_without_traceback(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "fail"}, headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {"error": "ValueError: boom", "request_id": "boom-1"}
    assert "Traceback" not in response.text
    logs = contract.logs()
    assert "Traceback" in logs and "ValueError: boom" in logs
    assert contract.post(json={}).status_code == 200  # still serving


def test_predictor_can_raise_4xx(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "http"})
    assert response.status_code == 418
    assert response.json()["error"] == "I am a teapot"
    response = contract.post(params={"reply": "aiohttp-error"})
    assert response.status_code == 422
    assert response.json()["error"] == "unprocessable"


def test_unencodable_result_is_500_naming_the_type(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "unencodable"})
    assert response.status_code == 500
    assert "cannot be encoded as JSON" in response.json()["error"]


def test_stream_chunked_text(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "stream"}, stream=True)
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "token0 token1 token2 "


def test_stream_chunked_json_lines(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "stream-json"})
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in response.text.splitlines()] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_stream_sse_from_async_generator(contract: InProcessReplica) -> None:
    response = contract.post(params={"reply": "astream"}, headers={"Accept": "text/event-stream"})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = response.text.split("\n\n")[:-1]
    assert events == [f"data: line {i}\ndata: second" for i in range(3)]


def test_stream_failure_after_start(contract: InProcessReplica) -> None:
    sse = contract.post(params={"reply": "stream-fail"}, headers={"Accept": "text/event-stream"})
    assert sse.text.startswith("data: first \n\n")
    assert 'event: error\ndata: {"error": "RuntimeError: stream broke"}' in sse.text
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        contract.post(params={"reply": "stream-fail"}).content  # noqa: B018
    assert contract.post(json={}).status_code == 200


def test_status_health_ready_routes(contract: InProcessReplica) -> None:
    status = contract.get("/").json()
    assert status["api"] == "test" and status["status"] == "ready"
    assert contract.get("/healthz").json() == {"status": "alive", "ready": True, "keys": ""}
    assert contract.get("/readyz").status_code == 200


def test_unknown_route_and_method_are_json(contract: InProcessReplica) -> None:
    missing = contract.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no route for GET /nope; predictions are POST /"
    wrong = requests.put(contract.url + "/", timeout=5)
    assert wrong.status_code == 405
    assert "use POST / to predict" in wrong.json()["error"]


def test_cortex_predictor_runs_unmodified(inproc) -> None:
    server = inproc(PREDICTORS / "cortex_style.py", config={"label": "old"})
    assert server.post(json=[1]).json() == {"label": "old", "payload": [1]}


def test_post_predict_runs_after_response(inproc, tmp_path) -> None:
    log = tmp_path / "post.log"
    server = inproc(PREDICTORS / "post.py", config={"log_file": str(log)})
    assert server.post(json={"id": 7}).json() == {"ok": True}
    until(lambda: log.exists() and log.read_text().endswith("\n"), "post_predict to write its line")
    assert log.read_text() == "200 7 {'ok': True}\n"  # response: what predict returned, as in Cortex


def test_api_keys(inproc) -> None:
    server = inproc(PREDICTORS / "cortex_style.py", api_keys=["secret-key-1"])
    denied = server.post(json={})
    assert denied.status_code == 401
    assert denied.json()["error"] == "missing or unknown API key"
    assert server.post(json={}, headers={"Authorization": "Bearer secret-key-1"}).status_code == 200
    assert server.post(json={}, headers={"X-API-Key": "secret-key-1"}).status_code == 200
    assert server.post(json={}, headers={"X-API-Key": "wrong"}).status_code == 401


def test_the_api_description_and_model_listings_need_a_key_too(inproc) -> None:
    keyed = {"X-API-Key": "secret-key-1"}
    server = inproc(PREDICTORS / "cortex_style.py", api_keys=["secret-key-1"])
    denied = server.get("/openapi.json")
    assert denied.status_code == 401 and denied.json()["error"] == "missing or unknown API key"
    assert server.get("/openapi.json", headers=keyed).json()["openapi"].startswith("3.")
    # The probes answer without one (the gateway never routes them).
    assert server.get("/healthz").status_code == 200 and server.get("/readyz").status_code == 200
    published = inproc(PREDICTORS / "cortex_style.py", api_keys=["secret-key-1"], public_openapi=True)
    assert published.get("/openapi.json").status_code == 200
    assert published.post(json={}).status_code == 401
    # The protocols' listings likewise: OpenAI's /v1/models, Open Inference's model metadata.
    chat = inproc(
        EXAMPLES / "chat" / "predictor.py",
        api="chat",
        protocol="openai",
        api_keys=["secret-key-1"],
        config={"token_delay": 0},
    )
    assert chat.get("/v1/models").status_code == 401
    assert chat.get("/v1/models", headers=keyed).json()["data"]
    v2 = inproc(PREDICTORS / "cortex_style.py", api_keys=["secret-key-1"], protocol="v2")
    assert v2.get(f"/v2/models/{v2.config.api}").status_code == 401
    assert v2.get(f"/v2/models/{v2.config.api}", headers=keyed).status_code == 200
    assert v2.get("/v2/health/ready").status_code == 200
