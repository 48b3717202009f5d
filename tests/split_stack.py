"""Splitters' and canaries' tests' helpers, on any target."""

from __future__ import annotations

import collections
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from cli import stack
from common import EXAMPLES

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
