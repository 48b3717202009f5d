"""Traffic splitters on the local target: weights, shadow traffic, live re-weighting, `stack split`."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_local import STACK, stack

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
    subprocess.run([*STACK, "down", "--local", str(root)], capture_output=True, timeout=120)


def shares(url: str, count: int, clients: int = 4) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def run(n: int) -> None:
        session = requests.Session()
        for _ in range(n):
            greeting = session.post(url, json={}, timeout=10).json()["greeting"]
            with lock:
                seen[greeting] += 1

    threads = [threading.Thread(target=run, args=(count // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return seen


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

    # `stack split` under load: no failed request, and afterwards every request goes to v2.
    with Load(url, concurrency=4) as load:
        time.sleep(1)
        out = stack("split", "--local", str(root), "iris", "iris-v1=0", "iris-v2=100", cwd=root)
        time.sleep(1)
    assert "iris: iris-v1=0, iris-v2=100" in out.stdout
    assert load.failures == 0 and load.codes[200] > 50, load.codes
    assert set(shares(url, 200)) == {"iris-v2"}
    status = json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)
    assert status["splitters"] == [
        {
            "name": "iris",
            "endpoint": "/iris",
            "weights": {"iris-v1": 0, "iris-v2": 100},
            "overridden": True,
            "mirror": "iris-v3 (50%)",
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


def test_nomad_says_it_has_no_splitters_yet(tmp_path: Path) -> None:
    from stack.plan import plan_nomad
    from stack.plan.render import PlanError
    from stack.spec import load_spec

    root = tmp_path / "splits"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    write_spec(root, 8080)
    with pytest.raises(PlanError, match="splitters run on the local and Compose targets"):
        plan_nomad(load_spec(root))
    wrong = subprocess.run(
        [*STACK, "autoscale", str(root), "--target", "compose", "--activator-port", "9101"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "--activator-port is for the Nomad target" in wrong.stderr
