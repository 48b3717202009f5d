"""Traffic splitters on the local target: weights, shadow traffic, live re-weighting, `stack split`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import STACK, stack
from common import EXAMPLES, free_port
from split_stack import (
    check_decided,
    requests_served,
    settled_shares,
    shares,
    watch_canaries,
    write_canary_project,
    write_spec,
)
from waits import until

from loadgen import Load


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "splits"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    port = free_port()
    write_spec(root, port)
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)


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
    until(lambda: "iris-v1" in shares(url, 40), "iris-v1 to get traffic again", every=0.2)


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
