"""The CLI as a user meets it: `stack init`, `stack serve`, log formats, errors without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from common import EXAMPLES, PREDICTORS, ServerFactory

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


def test_serve_prints_its_url_only_once_ready(tmp_path: Path, servers: ServerFactory) -> None:
    failing = servers.stack_serve(PREDICTORS / "init_fails.py", wait_ready=False)
    assert failing.wait_exit() == 3
    assert "Serving API" not in failing.logs() and "weights file corrupt" in failing.logs()
    first = servers.stack_serve(PREDICTORS / "cortex_style.py")
    taken = subprocess.run(
        [*STACK, "serve", str(PREDICTORS / "cortex_style.py"), "--port", str(first.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert taken.returncode == 3 and "Serving API" not in taken.stderr
    assert f"port {first.port} on 127.0.0.1 is already in use" in taken.stderr
    assert first.get("/").json()["predictor"] == "PythonPredictor"  # the class that was found, not ""


def test_serve_runs_like_a_replica_env_and_working_directory(tmp_path: Path, servers: ServerFactory) -> None:
    (tmp_path / "labels.json").write_text('["cat", "dog"]')
    (tmp_path / "p.py").write_text(
        "import json, os\n"
        "class PythonPredictor:\n"
        "    def __init__(self, config):\n"
        "        self.labels = json.load(open('labels.json'))  # relative to the project root, as in Cortex\n"
        "    def predict(self, payload):\n"
        "        return {'labels': self.labels, 'mode': os.environ['MODE']}\n"
    )
    (tmp_path / "stack.yaml").write_text(
        "project: cwd\napis:\n  - name: a\n    predictor:\n      path: p.py\n      env: {MODE: test}\n"
    )
    server = servers.start([*STACK, "serve", str(tmp_path), "--port", "{port}"], env={"MODE": "unset"})
    assert server.post(json={}).json() == {"labels": ["cat", "dog"], "mode": "test"}


def test_validate_without_a_spec_names_the_directory(tmp_path: Path) -> None:
    result = subprocess.run([*STACK, "validate", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"no stack.yaml in {tmp_path}: create one with `stack init NAME`" in result.stderr
    assert ":1:1" not in result.stderr


def test_scale_help_says_what_force_does() -> None:
    result = subprocess.run([*STACK, "scale", "--help"], capture_output=True, text=True)
    assert "Take the API from the autoscaler until the next `stack up`" in " ".join(result.stdout.split())


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STACK, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_every_project_command_takes_path_or_dash_p_and_usage_names_the_arguments(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    for command in (["validate"], ["plan"], ["down", "--local"], ["status", "--local"], ["dashboard", "--local"]):
        by_argument = _run(*command, str(root), cwd=tmp_path)
        by_option = _run(*command, "-p", str(root), cwd=tmp_path)
        assert "No such option" not in by_option.stderr, (command, by_option.stderr)
        assert (by_argument.returncode, by_argument.stdout) == (by_option.returncode, by_option.stdout), command
    assert _run("validate", "-p", str(root), cwd=tmp_path).stdout.startswith("ok")
    assert _run("down", "--local", "-p", str(root), cwd=tmp_path).stdout.strip() == "nothing was running"
    both = _run("down", "--local", str(root), "-p", str(tmp_path), cwd=tmp_path)
    assert both.returncode == 2 and "two projects given" in both.stderr
    usages = {
        "up": "stack up [OPTIONS] [PATH]",
        "logs": "stack logs [OPTIONS] [PATH] API",
        "status": "stack status [OPTIONS] [PATH] [API]",
        "scale": "stack scale [OPTIONS] [PATH] API REPLICAS",
        "split": "stack split [OPTIONS] [PATH] NAME API=WEIGHT...",
    }
    for command, usage in usages.items():
        assert f"Usage: {usage}" in _run(command, "--help", cwd=tmp_path).stdout, command


def test_an_api_named_like_a_directory_beside_it_is_the_api(tmp_path: Path) -> None:
    """`stack logs --local iris` in a project that has a directory `iris` (its model): iris is the API."""
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    (root / "echo").mkdir()  # a directory named like the API, without a stack.yaml
    logs = _run("logs", "--local", "echo", cwd=root)
    assert "usage" not in logs.stderr.lower() and "name the API" not in logs.stderr, logs.stderr
    assert "not running" in logs.stderr or "no replica" in logs.stderr, logs.stderr
    # With more arguments than names, the first is the project, and must be one.
    assert "'echo' is neither a project directory" not in _run("logs", "--local", ".", "echo", cwd=root).stderr
    wrong = _run("scale", "--local", "nodir", "echo", "2", cwd=root)
    assert wrong.returncode == 2 and "'nodir' is neither a project directory nor a spec file" in wrong.stderr
