"""Model affinity on the Compose target (networking.affinity): the controller container routes each model to the
replica that holds it, through the real Traefik; a replica added takes only its share of the models."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import stack
from common import free_port
from docker_stack import DOCKER, remove_project
from waits import until

pytestmark = DOCKER

# Cortex's python_client over models/<name>/1/: a model is loaded on its first request to a replica.
PREDICTOR = """
import os
import socket
import time


class PythonPredictor:
    def __init__(self, python_client, config):
        self.client = python_client

    def load_model(self, model_path):
        time.sleep(0.05)
        return os.path.basename(os.path.dirname(model_path))

    def predict(self, payload, headers):
        return {"replica": socket.gethostname(), "model": self.client.get_model(headers["x-model"])}
"""
MODELS = [f"model-{i}" for i in range(24)]  # the new replica ranks first for none of them: 0.75**24, 0.1%


def _write_project(root: Path, models: list[str], models_spec: str, autoscaling: str) -> tuple[str, int]:
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    for model in models:
        (root / "models" / model / "1").mkdir(parents=True)
        (root / "models" / model / "1" / "weights.bin").write_bytes(model.encode())
    name = f"af{int(time.time() * 1000) % 10**8}"
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: models\n"
        f"    predictor: {{type: python, path: predictor.py, multi_model_reloading: {models_spec}}}\n"
        "    networking: {affinity: {header: X-Model}}\n"
        f"    autoscaling: {autoscaling}\n"
    )
    return name, port


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "aff"
    name, port = _write_project(root, MODELS, "{dir: models}", "{min_replicas: 3, max_replicas: 3}")
    yield root, name, port
    remove_project(root, name)


def test_each_model_stays_on_its_replica_and_a_new_replica_takes_only_its_share(
    project: tuple[Path, str, int],
) -> None:
    root, _name, port = project
    stack("up", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/models"
    models = MODELS
    session = requests.Session()

    def replica(model: str) -> str:
        return str(session.post(url, headers={"X-Model": model}, json={}, timeout=10).json()["replica"])

    def owners() -> dict[str, str] | None:
        seen = {m: {replica(m) for _ in range(8)} for m in models}
        return {m: next(iter(r)) for m, r in seen.items()} if all(len(r) == 1 for r in seen.values()) else None

    for model in models:  # balanced as usual until a replica reports it served the model
        replica(model)

    def routed() -> dict | None:
        shown = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]["affinity"]
        return shown if set(models) <= set(shown["models"]) else None

    shown = until(routed, "stack status to show every model routed", 60)
    assert all(len(replicas) == 1 for replicas in shown["models"].values()), shown
    before = until(owners, "every model's requests on one replica", 30)
    assert len(set(before.values())) > 1
    # status names the replicas as the requests found them: the same models share one
    assert all((before[a] == before[b]) == (shown["models"][a] == shown["models"][b]) for a in models for b in models)
    # Each model was loaded by the replica its requests reach, once: the replicas' hit ratio says so.
    ratio = until(lambda: (routed() or {}).get("hit_ratio", 0) > 0.8 and routed(), "the hit ratio over 0.8", 10)
    assert set(ratio["held"]) == set(shown["held"])
    # Scaled by hand to 4: each model either stays where it was or moves to the new replica.
    stack("scale", "-p", str(root), "models", "4", "--force", cwd=root)

    def moved() -> dict[str, str] | None:
        now = owners()
        new = now and set(now.values()) - set(before.values())
        return now if new else None

    after = until(moved, lambda: f"some models on the new replica; status: {routed()}", 90)
    new_replica = (set(after.values()) - set(before.values())).pop()
    assert all(after[m] in (before[m], new_replica) for m in models), (before, after)
    assert sum(after[m] != before[m] for m in models) < len(models)


def test_models_beyond_what_the_replicas_hold_add_replicas_saying_why(tmp_path: Path) -> None:
    """Five models in use, two in each replica's memory (cache_size): the controller container's autoscaler
    grows the API from one replica to the three that hold them, and its reason says so."""
    root = tmp_path / "grow"
    models = [f"m{i}" for i in range(5)]
    name, port = _write_project(
        root,
        models,
        "{dir: models, cache_size: 2}",
        # A high target: only the models, never the load, are a reason to grow here.
        "{min_replicas: 1, max_replicas: 3, target_replica_concurrency: 50}",
    )
    try:
        stack("up", str(root), cwd=root)
        url = f"http://127.0.0.1:{port}/models"
        with requests.Session() as session:

            def grown() -> dict | None:
                for model in models:  # one round of every model per look: bounded by the wait's own bound
                    assert session.post(url, headers={"X-Model": model}, json={}, timeout=10).status_code == 200
                api = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
                return api if api["desired"] == 3 and api["ready"] == 3 else None

            api = until(grown, "three replicas", 180)
        changes = [c for c in api["autoscaler"]["changes"] if c["rule"] == "models"]
        assert changes and (changes[0]["current"], changes[0]["desired"]) == (1, 2), api["autoscaler"]
        # the first models it saw in use beyond one replica's two (3, 4 or all 5, as the requests came)
        first = r"models in use \([345]\) exceed what 1 replica\(s\) hold \(cache_size 2 each\)"
        assert re.search(first, changes[0]["reason"]), changes[0]["reason"]
        assert api["affinity"]["per_replica"] == 2
    finally:
        remove_project(root, name)
