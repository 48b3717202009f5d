"""A predictor that cannot start stops the server with one clear message and a non-zero exit."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import requests
from common import PREDICTORS, ServerFactory, free_port
from waits import until


@pytest.mark.parametrize(
    ("predictor", "message"),
    [
        (
            "unknown_param.py",
            r"unknown_param\.py:5: Predictor\.predict\(\) has unknown parameter 'request_body'; "
            r"it may take any of: batch_id, headers, payload, query_params",
        ),
        (
            "no_class.py",
            r"no_class\.py: no class PythonPredictor or ONNXPredictor or TensorFlowPredictor or Predictor "
            r"\(classes defined there: Model\)",
        ),
        ("syntax_error.py", r"syntax_error\.py:2: syntax error: expected ':'"),
        ("init_fails.py", r"init_fails\.py:6: Predictor\.__init__ failed: RuntimeError: weights file corrupt"),
        (
            "import_fails.py",
            r"import_fails\.py:1: importing the predictor failed: "
            r"ModuleNotFoundError: No module named 'module_that_does_not_exist'",
        ),
    ],
)
def test_startup_failure_names_file_and_line(servers: ServerFactory, predictor: str, message: str) -> None:
    server = servers.serving(PREDICTORS / predictor, wait_ready=False)
    assert server.wait_exit() == 3
    logs = server.logs()
    assert re.search(message, logs), logs
    assert "predictor failed to start" in logs or "syntax error" in logs


def test_init_failure_logs_the_traceback(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "init_fails.py", wait_ready=False)
    server.wait_exit()
    assert "Traceback (most recent call last)" in server.logs()
    assert 'in load\n    raise RuntimeError("weights file corrupt")' in server.logs()


def test_missing_class_named_in_config(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "cortex_style.py", predictor_class="Nope", wait_ready=False)
    assert server.wait_exit() == 3
    assert "no class Nope (classes defined there: PythonPredictor); set predictor.class in stack.yaml" in server.logs()


def test_missing_file(servers: ServerFactory, tmp_path) -> None:
    server = servers.serving(tmp_path / "absent.py", wait_ready=False)
    assert server.wait_exit() == 3
    assert "absent.py: predictor file not found" in server.logs()


def test_port_in_use_is_a_clear_error(servers: ServerFactory) -> None:
    first = servers.serving(PREDICTORS / "cortex_style.py")
    second = servers.serving(PREDICTORS / "cortex_style.py", port=first.port, wait_ready=False)
    assert second.wait_exit() == 3
    assert f"port {first.port} on 127.0.0.1 is already in use" in second.logs()
    multi = servers.serving(PREDICTORS / "cortex_style.py", port=first.port, processes_per_replica=2, wait_ready=False)
    assert multi.wait_exit() == 3
    assert f"port {first.port} on 127.0.0.1 is already in use" in multi.logs()


SLOW_LOAD = """\
import pathlib, time

class Predictor:
    def __init__(self, config):
        release = pathlib.Path(config["release"])
        for _ in range(6000):  # until the test releases it, at most a minute
            if release.exists():
                return
            time.sleep(0.01)

    def predict(self):
        return 1
"""


def test_healthz_answers_while_loading_and_readyz_waits(servers: ServerFactory, tmp_path) -> None:
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_LOAD)
    server = servers.serving(slow, wait_ready=False, config={"release": str(tmp_path / "release")})
    health = until(lambda: _get(server.url + "/healthz"), "/healthz to answer")
    assert health.status_code == 200
    assert server.get("/readyz").json() == {"status": "loading"}
    loading = server.post(json={})
    assert loading.status_code == 503 and loading.json()["error"] == "the predictor is still loading"
    # The container health probe (`python -m serving.probe`) says the same.
    loading_probe = _probe(server.url + "/readyz")
    assert loading_probe.returncode == 1 and f"probe {server.url}/readyz: answered 503" in loading_probe.stderr
    (tmp_path / "release").touch()
    until(lambda: server.get("/readyz").status_code == 200, "/readyz after the load")
    assert server.post(json={}).json() == 1
    assert _probe(server.url + "/readyz").returncode == 0


def _probe(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.probe", url], capture_output=True, text=True, timeout=30)


def test_the_health_probe_stays_light() -> None:
    """Docker runs the probe inside the replica's CPU limit while the replica serves: it must not
    import the runtime (aiohttp alone took most of a second there under load, and timed-out probes
    took healthy replicas out of the gateway)."""
    imports = "import runpy, sys; runpy.run_module('serving.probe', run_name='probe'); print(*sys.modules)"
    modules = subprocess.run(
        [sys.executable, "-c", imports],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert modules.returncode == 0, modules.stderr
    assert not [m for m in modules.stdout.split() if m.split(".")[0] in ("aiohttp", "prometheus_client", "yarl")]
    refused = _probe(f"http://127.0.0.1:{free_port()}/readyz")
    assert refused.returncode == 1 and "probe http://127.0.0.1:" in refused.stderr


def test_sigterm_while_loading_exits_at_once(servers: ServerFactory, tmp_path) -> None:
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_LOAD)
    server = servers.serving(slow, wait_ready=False, config={"release": str(tmp_path / "never")})
    until(lambda: _get(server.url + "/healthz"), "/healthz to answer")
    server.proc.send_signal(signal.SIGTERM)
    # The load never ends (nothing releases it): the process must not wait for it.
    assert server.wait_exit(timeout=20) == 0
    assert "stopped while the predictor was loading" in server.logs()


def _get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=1)
    except requests.ConnectionError:
        return None


def test_cli_module_needs_a_predictor() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "give a predictor file or --config FILE" in result.stderr


def test_an_error_raised_in_a_helper_module_names_that_file_and_line(servers: ServerFactory, tmp_path) -> None:
    (tmp_path / "helpers.py").write_text("import json\n\n\ndef load():\n    raise ValueError('bad weights')\n")
    (tmp_path / "predictor.py").write_text(
        "import helpers\n\n\nclass Predictor:\n    def __init__(self, config):\n        self.model = helpers.load()\n\n"
        "    def predict(self, payload):\n        return 1\n"
    )
    server = servers.serving(tmp_path / "predictor.py", wait_ready=False)
    assert server.wait_exit() == 3
    said = f"{tmp_path}/helpers.py:5 (from predictor.py:6): Predictor.__init__ failed: ValueError: bad weights"
    assert said in server.logs(), server.logs()


def test_a_missing_module_says_to_add_its_package_to_requirements(servers: ServerFactory, tmp_path) -> None:
    (tmp_path / "predictor.py").write_text(
        "import sklearn_is_not_here\n\n\nclass Predictor:\n    def predict(self, payload):\n        return 1\n"
    )
    server = servers.serving(tmp_path / "predictor.py", wait_ready=False)
    assert server.wait_exit() == 3
    assert (
        "No module named 'sklearn_is_not_here'; add sklearn_is_not_here to the API's requirements.txt" in server.logs()
    )
    (tmp_path / "predictor.py").write_text(
        "import cv2\n\n\nclass Predictor:\n    def predict(self, payload):\n        return 1\n"
    )
    server = servers.serving(tmp_path / "predictor.py", wait_ready=False)
    assert server.wait_exit() == 3
    assert "No module named 'cv2'; add opencv-python-headless to the API's requirements.txt" in server.logs()
