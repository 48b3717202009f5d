"""Malformed and hostile requests get a 4xx JSON answer and never a 500, and never take the replica down."""

from __future__ import annotations

import socket
import time

from common import PREDICTORS
from waits import until


def test_json_that_python_would_choke_on_is_a_400(inproc) -> None:
    server = inproc(PREDICTORS / "contract.py")
    deep = server.post(data=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"})
    assert deep.status_code == 400 and deep.json()["error"] == "malformed JSON body: nested too deeply"
    digits = server.post(data=b'{"n": ' + b"9" * 5000 + b"}", headers={"Content-Type": "application/json"})
    assert digits.status_code == 400 and "a number is too long" in digits.json()["error"]
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        refused = server.post(data=b'{"x": ' + constant + b"}", headers={"Content-Type": "application/json"})
        assert refused.status_code == 400
        assert (
            refused.json()["error"] == f"malformed JSON body: {constant.decode()} is not JSON (send null or a number)"
        )
    assert server.post(json={"still": "serving"}).status_code == 200


def test_nan_out_is_refused_by_name(inproc, tmp_path) -> None:
    predictor = tmp_path / "nan.py"
    predictor.write_text("class Predictor:\n    def predict(self):\n        return {'score': float('nan')}\n")
    server = inproc(predictor)
    response = server.post(json={})
    assert response.status_code == 500
    assert response.json()["error"] == (
        "ValueError: predict returned NaN or Infinity, which JSON cannot carry; return null or a number"
    )


def test_api_keys_are_read_strictly(inproc) -> None:
    server = inproc(PREDICTORS / "cortex_style.py", api_keys=["secret-key-1"])
    ok = {"Authorization": "Bearer secret-key-1"}
    assert server.post(json={}, headers={"Authorization": "bearer secret-key-1"}).status_code == 200  # any case
    assert server.post(json={}, headers={"Authorization": "secret-key-1"}).status_code == 401  # no scheme
    assert server.post(json={}, headers={"Authorization": "Basic secret-key-1"}).status_code == 401
    both = server.post(json={}, headers={**ok, "X-API-Key": "wrong"})
    assert both.status_code == 200  # a wrong X-API-Key does not mask a right Bearer
    status = server.get("/")
    assert status.status_code == 401 and status.json()["error"] == "missing or unknown API key"
    assert server.get("/", headers=ok).status_code == 200
    # Probes and metrics stay open for the internal network (kubelet-, Docker-, Prometheus-style callers).
    assert [server.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")] == [200, 200, 200]
    # Bytes no key could hold: a 401, not a 500.
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nX-API-Key: \xff\xfe\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        assert sock.recv(100).startswith(b"HTTP/1.1 401")


def test_a_slow_body_holds_no_slot_and_times_out_with_408(inproc) -> None:
    server = inproc(PREDICTORS / "contract.py", max_concurrency=1, body_timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        until(lambda: server.replica.last_request_at > 0, "the slow request to reach the handler")
        # Its body is still arriving, so it counts against nothing: a real request is served.
        assert server.replica.in_flight == 0
        assert server.post(json={}).status_code == 200
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 20:
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 1s" in answer


def test_requests_the_http_parser_refuses_get_json_too(servers) -> None:  # type: ignore[no-untyped-def]
    server = servers.serving(PREDICTORS / "contract.py")
    long_query = server.get("/?q=" + "x" * 100_000)
    assert long_query.status_code == 400 and long_query.headers["Content-Type"].startswith("application/json")
    assert long_query.json()["error"].startswith("malformed request: ")
    many = "".join(f"X-H{i}: v\r\n" for i in range(200)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request") and b"application/json" in head, head
    assert body.startswith(b'{"error": "malformed request: ')
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        garbage = sock.recv(300)
        assert b" 400 Bad Request" in garbage.split(b"\r\n")[0] and b"application/json" in garbage, garbage
    assert server.post(json={"still": "serving"}).status_code == 200
