"""Model affinity on the local target (networking.affinity): real Traefik, real replicas."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import chromium, console_errors, wait_for
from cli import stack
from common import PREDICTORS, free_port
from local_stack import status, unique_name
from waits import until, until_seen

# Loads a model on first use and keeps the last six.
PREDICTOR = """
import os
from collections import OrderedDict


class Predictor:
    def __init__(self, config):
        self.models = OrderedDict()
        self.loads = 0

    def predict(self, payload, query_params):
        name = query_params.get("model", "none")
        hit = name in self.models
        if not hit:
            self.loads += 1
            self.models[name] = True
            while len(self.models) > 6:
                self.models.popitem(last=False)
        self.models.move_to_end(name)
        return {"pid": os.getpid(), "model": name, "hit": hit, "loads": self.loads}
"""


def _project(root: Path, port: int, replicas: int = 3, affinity: str = "{query: model}") -> None:
    root.mkdir(exist_ok=True)
    (root / "predictor.py").write_text(PREDICTOR)
    (root / "stack.yaml").write_text(
        f"project: {unique_name(root)}\n"
        f"gateway: {{port: {port}}}\n"
        "apis:\n"
        "  - name: models\n"
        "    predictor: {path: predictor.py}\n"
        f"    networking: {{affinity: {affinity}}}\n"
        f"    autoscaling: {{min_replicas: {replicas}, max_replicas: {replicas}}}\n"
    )


def test_each_model_goes_to_the_replica_that_holds_it(tmp_path: Path) -> None:
    root, port = tmp_path / "aff", free_port()
    _project(root, port)
    stack("up", "--local", str(root), cwd=root)
    try:
        url = f"http://127.0.0.1:{port}/models"
        models = [f"m{i}" for i in range(6)]
        with requests.Session() as client:

            def answers(model: str, n: int = 6) -> list[dict]:
                return [client.post(url, params={"model": model}, json={}, timeout=10).json() for _ in range(n)]

            # Until the replicas report each model (within a probe), requests are balanced as usual; then
            # every request of a model reaches one replica.
            for model in models:
                answers(model, 1)
            until(lambda: set(models) <= set(status(root)["apis"][0]["affinity"]["models"]), "models routed", 30)
            # ... and once Traefik applies the routes file:
            until(lambda: all(len({a["pid"] for a in answers(m, 8)}) == 1 for m in models), "models pinned", 10)
            owners = {m: answers(m, 1)[0]["pid"] for m in models}
            assert len(set(owners.values())) > 1  # the models are spread over the replicas
            hits = Counter(a["hit"] for m in models for a in answers(m, 4))
            assert hits[True] == sum(hits.values()), hits  # pinned: each model's replica already holds it
            # A request without a model is balanced over every replica.
            pids = {client.post(url, json={}, timeout=10).json()["pid"] for _ in range(30)}
            assert len(pids) == 3
            # Wrong values are balanced too, never refused.
            assert client.post(url, params={"model": "we`ird"}, json={}, timeout=10).status_code == 200

        # Most requests found their model held: the ratio the replicas report (within a probe) says so.
        shown = until_seen(
            lambda: status(root)["apis"][0]["affinity"], lambda a: (a["hit_ratio"] or 0) > 0.5, "the hit ratio", 10
        )
        assert set(models) <= set(shown["models"]) and shown["hit_ratio"] <= 1, shown
        text = stack("status", "--local", "-p", str(root), "models", cwd=root).stdout
        assert "affinity: hit ratio" in text and "m0" in text
        # The dashboard's card says the same.
        url = stack("dashboard", "--local", str(root), cwd=root).stdout.strip()
        with chromium() as driver:
            driver.get(url)
            ratio, table = wait_for(driver, lambda d: _affinity_card(d, "m0"), "the affinity on the dashboard", 15)
            assert re.fullmatch(r"\d+%", ratio) and all(m in table for m in models), (ratio, table)
            assert not console_errors(driver)
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)


def _affinity_card(driver: Any, value: str) -> tuple[str, str] | None:
    """The models card's hit ratio and its table's text, once it lists `value`."""
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(By.CSS_SELECTOR, '[data-api="models"]')
    ratio = cards[0].find_elements(By.CSS_SELECTOR, '[data-field="hit-ratio"]') if cards else []
    table = cards[0].find_elements(By.CSS_SELECTOR, '[data-field="affinity"]') if cards else []
    if not ratio or not table or value not in table[0].text:
        return None
    return ratio[0].text, table[0].text


def test_affinity_needs_one_source(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _project(root, free_port(), affinity="{cookie: model}")
    result = stack("validate", str(root), cwd=root, check=False)
    assert result.returncode != 0 and "stack.yaml:6" in result.stderr and "affinity" in result.stderr
    _project(root, free_port(), affinity='{query: ""}')
    result = stack("validate", str(root), cwd=root, check=False)
    assert "affinity.query" in result.stderr and "expected a query parameter" in result.stderr


# Cortex's python_client over models/<name>/1/, two models in memory (models.cache_size).
CLIENT_PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, python_client, config):
        self.client = python_client

    def load_model(self, model_path):
        return os.path.basename(os.path.dirname(model_path))

    def predict(self, payload, query_params):
        return {"pid": os.getpid(), "model": self.client.get_model(query_params["model"])}
"""


@pytest.mark.parametrize("holds", ["cache_size", "observed"])
def test_models_beyond_what_the_replicas_hold_add_a_replica_and_say_why(tmp_path: Path, holds: str) -> None:
    """Five models in use, two fit in a replica: the autoscaler adds replicas up to what holds them (three),
    whether the spec gives the cache's size (Cortex's cache_size) or the replicas' evictions show it (a
    predictor with a cache of its own that names what it holds), and says so as its reason."""
    if shutil.which("prometheus") is None:
        pytest.skip("the autoscaler's signal comes from Prometheus here (Debian's prometheus package)")
    root, port = tmp_path / "grow", free_port()
    root.mkdir()
    models = [f"m{i}" for i in range(5)]
    if holds == "cache_size":
        (root / "predictor.py").write_text(CLIENT_PREDICTOR)
        for model in models:
            (root / "models" / model / "1").mkdir(parents=True)
            (root / "models" / model / "1" / "weights.bin").write_bytes(model.encode())
        predictor = "{type: python, path: predictor.py, multi_model_reloading: {dir: models, cache_size: 2}}"
    else:
        shutil.copy(PREDICTORS / "own_cache.py", root / "predictor.py")
        predictor = "{path: predictor.py, config: {size: 2}}"
    (root / "stack.yaml").write_text(
        f"project: {unique_name(root)}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: models\n"
        f"    predictor: {predictor}\n"
        "    networking: {affinity: {query: model}}\n"
        # A high target: only the models, never the load, are a reason to grow here.
        "    autoscaling: {min_replicas: 1, max_replicas: 3, target_replica_concurrency: 50}\n"
    )
    stack("up", "--local", str(root), cwd=root)
    try:
        url = f"http://127.0.0.1:{port}/models"
        with requests.Session() as client:

            def grown() -> dict | None:
                for model in models:  # one round of every model per look: bounded by the wait's own bound
                    assert client.post(url, params={"model": model}, json={}, timeout=10).status_code == 200
                api = status(root)["apis"][0]
                return api if api["desired"] == 3 and api["ready"] == 3 else None

            api = until(grown, lambda: f"three replicas; status: {status(root)['apis'][0]}", 120)
        changes = [c for c in api["autoscaler"]["changes"] if c["rule"] == "models"]
        assert changes and changes[0]["current"] == 1 and changes[0]["desired"] == 2, api["autoscaler"]
        each = "cache_size 2 each" if holds == "cache_size" else "2 each, as their evictions showed"
        reason = changes[0]["reason"]
        assert re.search(r"models in use \([345]\) exceed what 1 replica\(s\) hold", reason) and each in reason, reason
        assert api["affinity"]["per_replica"] == 2
        text = stack("status", "--local", "-p", str(root), "models", cwd=root).stdout
        assert "values one replica holds: 2" in text and "exceed what 1 replica(s) hold" in text
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)
