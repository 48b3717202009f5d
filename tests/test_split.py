"""Traffic splitters on the local target: weights, shadow traffic, live re-weighting, `stack split`."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import STACK
from test_local import stack

from conftest import EXAMPLES, free_port
from loadgen import Load

API = """\
  - name: {name}
    predictor:
      path: predictor.py
      config: {{greeting: {name}}}
    autoscaling: {{min_replicas: 1, max_replicas: 1}}
"""


def write_spec(root: Path, port: int, weights: tuple[int, int] = (80, 20)) -> None:
    (root / "stack.yaml").write_text(
        "project: splits\n"
        f"gateway: {{port: {port}}}\n"
        "apis:\n" + "".join(API.format(name=n) for n in ("iris-v1", "iris-v2", "iris-v3")) + "splitters:\n"
        "  - name: iris\n"
        "    apis:\n"
        f"      - {{name: iris-v1, weight: {weights[0]}}}\n"
        f"      - {{name: iris-v2, weight: {weights[1]}}}\n"
        "    mirror: {api: iris-v3, percent: 50}\n"
    )


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "splits"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    port = free_port()
    write_spec(root, port)
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)


def shares(url: str, count: int, clients: int = 4) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def run(n: int) -> None:
        session = requests.Session()
        for _ in range(n):
            answer = session.post(url, json={}, timeout=10)
            # Who answered; a failing canary's error counts as its own share ("HTTP 500").
            greeting = answer.json()["greeting"] if answer.status_code == 200 else f"HTTP {answer.status_code}"
            with lock:
                seen[greeting] += 1

    threads = [threading.Thread(target=run, args=(count // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return seen


def settled_shares(url: str, want: set[str], count: int = 200, settle: float = 10.0) -> collections.Counter[str]:
    """The shares of `count` requests once the gateway applied new weights: Traefik reloads a rewritten
    route file within its watch latency (a 100 ms throttle, longer on a loaded machine), at most `settle`."""
    started = time.monotonic()
    while (seen := set(shares(url, 20))) != want:
        assert time.monotonic() < started + settle, f"the gateway still sends requests to {sorted(seen - want)}"
    print(f"the gateway applied the weights after {time.monotonic() - started:.2f}s")
    return shares(url, count)


def requests_served(root: Path, api: str) -> int:
    status = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)
    replica = next(a for a in status["apis"] if a["name"] == api)["replicas"][0]
    text = requests.get(f"http://127.0.0.1:{replica['port']}/metrics", timeout=5).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("predictor_requests_total{") and 'code="200"' in line
        )
    )


def test_weights_mirror_and_live_reweighting(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/iris"
    stack("up", "--local", str(root), cwd=root)

    seen = shares(url, 2000)
    assert set(seen) == {"iris-v1", "iris-v2"}  # clients never see the mirror's answers
    assert abs(seen["iris-v1"] / sum(seen.values()) - 0.80) <= 0.03, seen
    # The mirror got copies of about half of them.
    mirrored = requests_served(root, "iris-v3")
    assert 0.3 * 2000 <= mirrored <= 0.7 * 2000, mirrored
    # Each API keeps its own endpoint.
    assert requests.post(f"http://127.0.0.1:{port}/iris-v2", json={}, timeout=5).json()["greeting"] == "iris-v2"

    table = stack("status", "--local", "-p", str(root), cwd=root).stdout
    assert "iris-v1=80 iris-v2=20" in table and "stack.yaml" in table
    # `stack status` shows the share each API got over the last minute (the gateway's counters).
    observed = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)
        observed = status["splitters"][0]["observed"]
        if observed and abs(observed["iris-v1"] - 0.80) <= 0.03:
            break
        time.sleep(1)
    assert observed and abs(observed["iris-v1"] - 0.80) <= 0.03 and set(observed) == {"iris-v1", "iris-v2"}, observed

    # `stack split` under load: no failed request, and afterwards every request goes to v2.
    with Load(url, concurrency=4) as load:
        time.sleep(1)
        out = stack("split", "--local", str(root), "iris", "iris-v1=0", "iris-v2=100", cwd=root)
        time.sleep(1)
    assert "iris: iris-v1=0, iris-v2=100" in out.stdout
    assert load.failures == 0 and load.codes[200] > 50, load.codes
    assert set(settled_shares(url, {"iris-v2"})) == {"iris-v2"}
    status = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)
    assert status["splitters"][0].pop("observed")
    assert status["splitters"] == [
        {
            "name": "iris",
            "endpoint": "/iris",
            "weights": {"iris-v1": 0, "iris-v2": 100},
            "overridden": True,
            "mirror": "iris-v3 (50%)",
            "canary": None,
        }
    ]

    # Bad input is a clear error and changes nothing.
    bad = stack("split", "--local", str(root), "iris", "iris-v9=5", cwd=root, check=False)
    assert bad.returncode == 1 and "splitter iris has no API iris-v9" in bad.stderr
    zero = stack("split", "--local", str(root), "iris", "iris-v2=0", cwd=root, check=False)
    assert zero.returncode == 1 and "at least one API needs a weight above 0" in zero.stderr

    # The next `stack up` re-applies stack.yaml's weights.
    stack("up", "--local", str(root), cwd=root)
    again = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)["splitters"][0]
    assert again["weights"] == {"iris-v1": 80, "iris-v2": 20} and not again["overridden"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "iris-v1" not in shares(url, 40):
        time.sleep(0.2)
    assert "iris-v1" in shares(url, 40)


def test_splitter_mistakes_are_spec_errors(tmp_path: Path) -> None:
    from stack.spec import SpecError, load_spec

    root = tmp_path / "bad"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    write_spec(root, 8080)
    text = (root / "stack.yaml").read_text()
    (root / "stack.yaml").write_text(text.replace("{name: iris-v2, weight: 20}", "{name: iris-v4, weight: 20}"))
    with pytest.raises(SpecError) as unknown:
        load_spec(root)
    assert "splitters[0].apis[1].name: no API named 'iris-v4'; did you mean" in str(unknown.value)
    (root / "stack.yaml").write_text(text.replace("weight: 80", "weight: 0").replace("weight: 20", "weight: 0"))
    with pytest.raises(SpecError, match="at least one API needs a weight above 0"):
        load_spec(root)
    (root / "stack.yaml").write_text(text.replace("weight: 80", "weight: -1"))
    with pytest.raises(SpecError, match="weight"):
        load_spec(root)
    (root / "stack.yaml").write_text(text.replace("  - name: iris\n", "  - name: iris-v1\n"))
    with pytest.raises(SpecError, match="endpoint /iris-v1 is already used by apis"):
        load_spec(root)


def test_the_activator_port_is_for_nomad_only(tmp_path: Path) -> None:
    root = tmp_path / "splits"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    write_spec(root, 8080)
    wrong = subprocess.run(
        [*STACK, "autoscale", str(root), "--target", "compose", "--activator-port", "9101"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "--activator-port is for the Nomad target" in wrong.stderr


FLAKY = '''\
"""Answers like the echo example, but every Nth request fails (a 500)."""

import itertools
import threading


class Predictor:
    def __init__(self, config):
        self.greeting = config["greeting"]
        self.every = int(config.get("fail_every", 0))
        self.calls = itertools.count(1)
        self.lock = threading.Lock()

    def predict(self, payload):
        with self.lock:
            call = next(self.calls)
        if self.every and call % self.every == 0:
            raise RuntimeError(f"request {call} fails on purpose")
        return {"greeting": self.greeting}
'''

CANARY_API = """\
  - name: {name}
    predictor:
      path: flaky.py
      config: {{greeting: {name}, fail_every: {every}}}
    autoscaling: {{min_replicas: 1, max_replicas: 1}}
"""

ROLLOUT = """\
  - name: {name}
    apis: [{{name: stable, weight: 100}}, {{name: {canary}, weight: 0}}]
    canary: {{api: {canary}, steps: [10, 50, 100], interval: 2s, min_requests: 20}}
"""


def write_canary_project(root: Path, project: str, port: int, extra: str = "") -> None:
    """`stable` behind two splitters: one rolls out `good`, the other `bad`, which fails 1 request in 10."""
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    (root / "flaky.py").write_text(FLAKY)
    apis = "".join(CANARY_API.format(name=n, every=e) for n, e in (("stable", 0), ("good", 0), ("bad", 10)))
    (root / "stack.yaml").write_text(
        f"project: {project}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{scrape_interval: 1s{extra}}}\n"
        "apis:\n" + apis + "splitters:\n"
        f"{ROLLOUT.format(name='good-rollout', canary='good')}"
        f"{ROLLOUT.format(name='bad-rollout', canary='bad')}"
    )


def watch_canaries(status: Callable[[], dict[str, Any]], port: int) -> dict[str, dict[str, Any]]:
    """Load both splitters until both canaries are decided (at most two minutes); their splitters' status."""
    good, bad = (f"http://127.0.0.1:{port}/{n}-rollout" for n in ("good", "bad"))
    splitters: dict[str, dict[str, Any]] = {}
    with Load(good, concurrency=3) as load_good, Load(bad, concurrency=3):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            splitters = {s["name"]: s for s in status()["splitters"]}
            phases = {name: (s["canary"] or {}).get("phase") for name, s in splitters.items()}
            if phases == {"good-rollout": "promoted", "bad-rollout": "rolled back"}:
                break
            time.sleep(0.5)
    # Through the healthy rollout no request failed, at any step.
    assert load_good.failures == 0 and load_good.codes[200] > 100, load_good.codes
    return splitters


def check_decided(splitters: dict[str, dict[str, Any]]) -> None:
    good, bad = splitters["good-rollout"], splitters["bad-rollout"]
    assert good["canary"]["phase"] == "promoted", good
    assert good["weights"] == {"stable": 0, "good": 100}
    advanced = [d for d in good["canary"]["decisions"] if d["action"] in ("advance", "promote")]
    assert [d["weight"] for d in advanced] == [50, 100] and all(d["error_rate"] == 0 for d in advanced)
    assert bad["canary"]["phase"] == "rolled back", bad
    assert bad["weights"] == {"stable": 100, "bad": 0}
    actions = [d["action"] for d in bad["canary"]["decisions"]]
    # Rolled back at its first judgement on enough requests: it never left its first step.
    assert "advance" not in actions and actions[-1] == "rollback", actions
    rollback = bad["canary"]["decisions"][-1]
    assert 0.05 <= rollback["error_rate"] <= 0.15 and rollback["requests"] >= 20, rollback
    assert "> max_error_rate 1%" in rollback["reason"]


def test_canaries_promote_a_healthy_version_and_roll_back_a_failing_one(tmp_path: Path) -> None:
    root = tmp_path / "canaries"
    port = free_port()
    write_canary_project(root, "canaries", port)
    try:
        stack("up", "--local", str(root), cwd=root)

        def status() -> dict[str, Any]:
            return json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)

        splitters = watch_canaries(status, port)
        check_decided(splitters)
        # After the rollback every request of that splitter goes to the baseline again.
        assert set(settled_shares(f"http://127.0.0.1:{port}/bad-rollout", {"stable"}, 100)) == {"stable"}
        # The shares each API got, from the gateway's counters (sampled every few seconds).
        deadline = time.monotonic() + 30
        while not splitters["bad-rollout"]["observed"] and time.monotonic() < deadline:
            time.sleep(0.5)
            splitters = {s["name"]: s for s in status()["splitters"]}
        observed = splitters["bad-rollout"]["observed"]
        assert observed and abs(sum(observed.values()) - 1) < 0.01 and observed["bad"] < 0.5, observed
        table = stack("status", "--local", "-p", str(root), cwd=root).stdout
        assert "canary bad (splitter bad-rollout): rolled back at 0%" in table
        assert "canary good (splitter good-rollout): promoted at 100%" in table
        # The decisions are metrics too (the supervisor's own /metrics, which Prometheus scrapes).
        state = json.loads((root / ".stack" / "local" / "state.json").read_text())
        metrics = requests.get(f"http://127.0.0.1:{state['metrics_port']}/metrics", timeout=5).text
        assert 'stack_canary_phase{api="bad",phase="rolled back",splitter="bad-rollout"} 1.0' in metrics
        assert 'stack_canary_weight_percent{api="good",splitter="good-rollout"} 100.0' in metrics
        assert 'stack_canary_decisions_total{action="rollback",api="bad",splitter="bad-rollout"} 1.0' in metrics
        # Running `stack up` again with nothing changed decides nothing again.
        stack("up", "--local", str(root), cwd=root)
        again = {s["name"]: s["canary"]["phase"] for s in status()["splitters"]}
        assert again == {"good-rollout": "promoted", "bad-rollout": "rolled back"}
        # A new version of the promoted API is a new canary: this one fails, and goes back to 0%.
        spec = root / "stack.yaml"
        spec.write_text(spec.read_text().replace("{greeting: good, fail_every: 0}", "{greeting: good, fail_every: 10}"))
        stack("up", "--local", str(root), cwd=root)
        url = f"http://127.0.0.1:{port}/good-rollout"
        with Load(url, concurrency=3):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                canary = next(s for s in status()["splitters"] if s["name"] == "good-rollout")["canary"]
                if canary["phase"] != "progressing":
                    break
                time.sleep(0.5)
        assert canary["phase"] == "rolled back", canary
        since = [d["action"] for d in canary["decisions"]]
        since = since[len(since) - since[::-1].index("start") :]
        assert "advance" not in since and since[-1] == "rollback", canary["decisions"]
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)
