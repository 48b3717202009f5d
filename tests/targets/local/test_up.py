"""`stack up --local` end to end: the real Traefik binary, real replica processes, real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
from cli import stack
from common import PREDICTORS, free_port
from local_stack import listening, status, write_spec
from waits import until, until_seen

from loadgen import Load
from stack.targets.local.state import pid_alive


def test_up_curl_update_scale_kill_down(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/echo"
    up = stack("up", "--local", str(root), cwd=root)
    assert f"echo             http://127.0.0.1:{port}/echo" in up.stdout
    assert requests.post(url, json={"a": 1}, timeout=5).json() == {"greeting": "echo", "payload": {"a": 1}, "query": {}}
    assert requests.post(url + "x", json={}, timeout=5).status_code == 404  # /echox is not /echo
    first = status(root)
    supervisor = first["pid"]
    assert first["apis"][0]["ready"] == 2

    # Scale to 3 and back under load: no request fails.
    with Load(url) as load:
        refused = stack("scale", "--local", "echo", "3", "-p", str(root), cwd=root, check=False)
        assert refused.returncode == 1 and "the autoscaler owns echo" in refused.stderr
        stack("scale", "--local", "echo", "3", "--force", "-p", str(root), cwd=root)
        assert status(root)["apis"][0]["ready"] == 3
        stack("scale", "--local", "echo", "2", "-p", str(root), cwd=root)
        time.sleep(1)
    assert load.total > 100 and load.failures == 0, load.codes

    # Change the predictor's config and `stack up` again under load: a rolling update, no failures.
    write_spec(root, port, greeting="v2")
    with Load(url) as load:
        again = stack("up", "--local", str(root), cwd=root)
        time.sleep(1)
    assert "a local stack is running: updating it" in again.stderr
    assert load.failures == 0, load.codes
    assert set(load.bodies) >= {'{"greeting": "v2", "payload": {"load": true}, "query": {}}'}
    # The old version's replicas leave once drained (drain_delay): then two of the new one remain.
    after = until_seen(
        lambda: status(root),
        lambda s: len(s["apis"][0]["replicas"]) == 2 and len({r["version"] for r in s["apis"][0]["replicas"]}) == 1,
        "two replicas of the new version",
    )
    assert after["pid"] == supervisor  # the same supervisor: updated, not a second copy
    replicas = after["apis"][0]["replicas"]
    assert requests.post(url, json={}, timeout=5).json()["greeting"] == "v2"

    # kill -9 one replica under load: failures stay bounded and the replica is replaced.
    victim = replicas[0]
    with Load(url, concurrency=4) as load:
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = status(root)["apis"][0]
            if current["ready"] == 2 and victim["id"] not in {r["id"] for r in current["replicas"]}:
                break
            time.sleep(0.2)
        time.sleep(1)
    assert current["ready"] == 2 and current["restarts"] == 1, current
    # Lost: what was in flight on the killed replica, and what Traefik had already sent on its
    # kept-alive connections before the supervisor took it out (milliseconds): about one each per client.
    assert load.failures <= 8, load.codes
    assert load.codes[200] > 100

    pids = [r["pid"] for r in current["replicas"]] + [supervisor]
    down = stack("down", "--local", str(root), cwd=root)
    assert down.stdout.strip() == "stopped"
    assert not any(pid_alive(pid) for pid in pids)
    assert not listening(port)
    assert not (root / ".stack/local/state.json").exists()


def test_logs_are_prefixed_by_replica(project: tuple[Path, int]) -> None:
    root, port = project
    stack("up", "--local", str(root), cwd=root)
    requests.post(f"http://127.0.0.1:{port}/echo", json={}, headers={"X-Request-ID": "find-me"}, timeout=5)
    logs = stack("logs", "--local", "echo", "-p", str(root), cwd=root).stdout
    assert any(line.startswith("echo-") and "request_id=find-me" in line for line in logs.splitlines()), logs
    # The gateway writes no line per request unless gateway.access_log asks for it (it costs CPU).
    access_log = root / ".stack/logs/traefik-access.log"
    assert not access_log.exists()
    stack("down", "--local", str(root), cwd=root)
    spec = root / "stack.yaml"
    gateway = f"gateway: {{port: {port}}}"
    spec.write_text(spec.read_text().replace(gateway, f"gateway: {{port: {port}, access_log: true}}"))
    stack("up", "--local", str(root), cwd=root)
    requests.post(f"http://127.0.0.1:{port}/echo", json={}, timeout=5)
    # Traefik writes its access log asynchronously.
    until(lambda: access_log.exists() and "POST /echo" in access_log.read_text(), "the request in the access log")


def test_failing_predictor_shows_its_error(project: tuple[Path, int]) -> None:
    root, port = project
    (root / "predictor.py").write_text(
        "class Predictor:\n    def __init__(self, config):\n        raise RuntimeError('no weights here')\n"
        "    def predict(self, payload):\n        return payload\n"
    )
    write_spec(root, port, min_replicas=1)
    result = stack("up", "--local", str(root), cwd=root, check=False, timeout=300)
    assert result.returncode == 1
    assert "API echo cannot start:" in result.stderr
    assert "predictor.py:3: Predictor.__init__ failed: RuntimeError: no weights here" in result.stderr
    assert "last log lines:" in result.stderr
    table = stack("status", "--local", "-p", str(root), cwd=root).stdout
    assert "error" in table and "no weights here" in table


def test_gateway_port_in_use(project: tuple[Path, int]) -> None:
    root, port = project
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", port))
        blocker.listen()
        result = stack("up", "--local", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert f"gateway port {port} is already in use" in result.stderr


def test_commands_without_a_running_stack(project: tuple[Path, int]) -> None:
    root, _ = project
    result = stack("status", "--local", "-p", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert "no local stack is running" in result.stderr and "stack up --local" in result.stderr
    assert stack("down", "--local", str(root), cwd=root).stdout.strip() == "nothing was running"


@pytest.mark.parametrize("with_prometheus", [True, False], ids=["prometheus", "scrape"])
def test_autoscaling_follows_a_load_step(tmp_path: Path, with_prometheus: bool) -> None:
    if with_prometheus and shutil.which("prometheus") is None:
        pytest.skip("Prometheus is not on PATH (.ci/run installs Debian's prometheus package)")
    root = tmp_path / "auto"
    root.mkdir()
    shutil.copy(PREDICTORS / "quarter_second.py", root / "predictor.py")
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: autotest\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{enabled: {str(with_prometheus).lower()}, port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: slow\n"
        "    predictor: {path: predictor.py}\n"
        "    autoscaling:\n"
        "      min_replicas: 1\n"
        "      max_replicas: 6\n"
        "      target_replica_concurrency: 1\n"
        "      window: 2s\n"
        "      max_upscale_factor: 4\n"
        "      max_downscale_factor: 0.25\n"
        "      upscale_stabilization_period: 0s\n"
        "      downscale_stabilization_period: 3s\n"
    )
    try:
        stack("up", "--local", str(root), cwd=root)
        url = f"http://127.0.0.1:{port}/slow"
        peak = 1
        with Load(url, concurrency=8) as load:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and peak < 4:
                peak = max(peak, status(root)["apis"][0]["ready"])
                time.sleep(0.5)
        assert peak >= 4, status(root)
        assert load.failures == 0, (load.codes, (root / ".stack/logs/supervisor.log").read_text()[-3000:])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            api = status(root)["apis"][0]
            if api["desired"] == 1 and api["ready"] == 1:
                break
            time.sleep(0.5)
        assert (api["desired"], api["ready"]) == (1, 1), api
        changes = api["autoscaler"]["changes"]
        assert any(c["desired"] > c["current"] for c in changes), changes
        assert any(c["desired"] < c["current"] and "scale down" in c["reason"] for c in changes), changes
        detail = stack("status", "--local", "slow", "-p", str(root), cwd=root).stdout
        assert "-> 1 [target] scale down" in detail, detail
        if with_prometheus:  # the autoscaler's own metrics are scraped too
            url = json.loads((root / ".stack/local/state.json").read_text())["prometheus_url"]
            query = 'sum(stack_autoscaler_decisions_total{api="slow",direction="down"})'
            deadline = time.monotonic() + 30  # the next scrapes of the supervisor's /metrics
            while time.monotonic() < deadline:
                answer = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
                result = answer["data"]["result"]
                if result and float(result[0]["value"][1]) >= 1:
                    break
                time.sleep(0.5)
            assert result and float(result[0]["value"][1]) >= 1, result
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)


def test_spec_file_paths_status_counts_and_notes(project: tuple[Path, int]) -> None:
    """The spec file given is the one that runs; a path works positionally; a log file beside
    stack.yaml changes nothing; counts are exact; a moved Prometheus port is said."""
    root, port = project
    (root / "stack.yaml").write_text("project: wrong\napis: []\n")  # must never be read below
    prom_port = free_port()
    write_spec(root, port, greeting="other", min_replicas=1)
    (root / "stack.yaml").rename(root / "other.yaml")
    (root / "stack.yaml").write_text("project: wrong\napis: []\n")
    text = (root / "other.yaml").read_text().replace("apis:\n", f"prometheus: {{port: {prom_port}}}\napis:\n")
    (root / "other.yaml").write_text(text)
    spec = str(root / "other.yaml")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", prom_port))
        blocker.listen()
        up = stack("up", "--local", spec, cwd=root)
        url = f"http://127.0.0.1:{port}/echo"
        for _ in range(7):
            assert requests.post(url, json={}, timeout=5).json()["greeting"] == "other"
        (root / "up.log").write_text(up.stdout + up.stderr)  # `stack up > up.log`, as a newcomer does
        if shutil.which("prometheus"):
            assert f"Prometheus port {prom_port} is in use" in up.stderr

            def counted() -> dict:
                api = json.loads(stack("status", "--local", "--json", spec, cwd=root).stdout)["apis"][0]
                return api if api.get("2xx") == 7 else {}

            deadline = time.monotonic() + 30
            api = counted()
            while not api and time.monotonic() < deadline:
                api = counted()
            assert api.get("2xx") == 7 and api.get("5xx") == 0, api  # exact, not extrapolated
        table = stack("status", "--local", spec, "echo", cwd=root).stdout  # PATH then API, no -p
        assert "live" in table and "files changed" not in table
        detail = json.loads(stack("status", "--local", "--json", spec, cwd=root).stdout)["apis"][0]
        assert detail["status"] == "live" and detail["changed"] is False and detail["desired"] == 1
        (root / "predictor.py").write_text((root / "predictor.py").read_text() + "\n# edited\n")
        changed = stack("status", "--local", spec, cwd=root).stdout
        assert "live (files changed since the last `stack up`)" in changed
        # Scale and logs act on what is deployed, whatever changed in the files.
        stack("scale", "--local", spec, "echo", "2", "--force", cwd=root)
        scaled = json.loads(stack("status", "--local", "--json", spec, cwd=root).stdout)["apis"][0]
        assert (scaled["ready"], scaled["desired"], scaled["changed"]) == (2, 2, True), scaled
        assert "ready: api echo" in stack("logs", "--local", spec, "echo", cwd=root).stdout
        unknown = stack("logs", "--local", spec, "nope", cwd=root, check=False)
        assert unknown.returncode == 1 and "no API named 'nope'; the spec has: echo" in unknown.stderr
        assert stack("down", "--local", spec, cwd=root).stdout.strip() == "stopped"
    assert stack("down", "--local", spec, cwd=root).stdout.strip() == "nothing was running"
