"""The CLI as a user meets it: `stack init`, `stack serve`, log formats, errors without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, PREDICTORS, ServerFactory

STACK = [sys.executable, "-m", "stack.cli"]


def test_init_scaffolds_a_working_project(tmp_path: Path, servers: ServerFactory) -> None:
    created = subprocess.run(
        [*STACK, "init", "hello", "--dir", str(tmp_path / "hello")], capture_output=True, text=True, check=True
    )
    for name in ("stack.yaml", "predictor.py", "requirements.txt", "sample.json"):
        assert f"created {tmp_path / 'hello' / name}" in created.stdout
    validate = subprocess.run([*STACK, "validate", str(tmp_path / "hello")], capture_output=True, text=True)
    assert validate.returncode == 0 and validate.stdout.startswith("ok:")
    server = servers.stack_serve(tmp_path / "hello")
    sample = json.loads((tmp_path / "hello" / "sample.json").read_text())
    assert server.post(json=sample).json() == {"message": "hello, world"}
    again = subprocess.run([*STACK, "init", "hello", "--dir", str(tmp_path / "hello")], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr and "nothing was written" in again.stderr


def test_init_rejects_a_bad_name(tmp_path: Path) -> None:
    result = subprocess.run([*STACK, "init", "Bad_Name", "--dir", str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "'Bad_Name' is not a valid project name" in result.stderr
    assert not (tmp_path / "x").exists()


def test_serve_prints_the_url_and_exits_0_on_ctrl_c(servers: ServerFactory) -> None:
    server = servers.stack_serve(EXAMPLES / "echo")
    assert f"Serving API echo at http://127.0.0.1:{server.port}/" in server.logs()
    assert server.stop(signal.SIGINT) == 0
    assert "stopped" in server.logs()


def test_serve_a_bare_predictor_file(servers: ServerFactory) -> None:
    server = servers.stack_serve(PREDICTORS / "cortex_style.py")
    assert server.post(json=[1]).json() == {"label": "cortex", "payload": [1]}  # empty config


def test_json_logs_have_one_object_per_request(servers: ServerFactory) -> None:
    server = servers.stack_serve(EXAMPLES / "echo", "--log-format", "json")
    server.post(json={}, headers={"X-Request-ID": "json-1"})
    server.stop()
    entries = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    request = next(e for e in entries if e.get("request_id") == "json-1")
    assert request["message"] == "request" and request["method"] == "POST" and request["status"] == 200
    assert isinstance(request["duration_ms"], float) and request["level"] == "info"


def test_serve_needs_api_when_several(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text("class Predictor:\n    def predict(self):\n        return 1\n")
    (tmp_path / "stack.yaml").write_text(
        "project: two\napis:\n  - name: a\n    predictor: {path: p.py}\n  - name: b\n    predictor: {path: p.py}\n"
    )
    result = subprocess.run([*STACK, "serve", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "stack.yaml has 2 APIs (a, b); choose one with --api NAME" in result.stderr
    assert "Traceback" not in result.stderr


def test_autoscale_says_what_it_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STACK_AUTOSCALER_CONFIG", "STACK_PROMETHEUS_URL")}
    no_config = subprocess.run([*STACK, "autoscale"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert no_config.returncode == 1
    assert "STACK_AUTOSCALER_CONFIG is not set: pass a stack.yaml" in no_config.stderr

    config = '{"project": "shop", "scrape_interval": 1.0, "apis": []}'
    no_prometheus = subprocess.run(
        [*STACK, "autoscale"], capture_output=True, text=True, env={**env, "STACK_AUTOSCALER_CONFIG": config}
    )
    assert no_prometheus.returncode == 1 and "--prometheus is needed without a stack.yaml" in no_prometheus.stderr

    no_docker = subprocess.run(
        [*STACK, "autoscale", str(EXAMPLES / "echo")],
        capture_output=True,
        text=True,
        env={**env, "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}"},
    )
    assert no_docker.returncode == 1
    assert "cannot reach the Docker engine to scale echo" in no_docker.stderr
