"""Named keys (gateway.keys) on the local target: real Traefik asking the controller, real replicas."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from browser import chromium, console_errors, wait_for
from cli import stack
from common import free_port
from local_stack import status, unique_name
from selenium.webdriver.common.by import By
from waits import until

PREDICTOR = """
import os
import time


class Predictor:
    def __init__(self, config):
        self.gate = config["gate"]

    def predict(self, payload):
        if isinstance(payload, dict) and payload.get("hold"):
            deadline = time.monotonic() + 30
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return {"ok": True}
"""

FRONT = """
class Predictor:
    def __init__(self, config, apis):
        self.alpha = apis["alpha"]

    async def predict(self, payload):
        return await self.alpha.apredict(payload)
"""

GOLD, BULK, ONE = "gold-key-0123456789abcdef", "bulk-key-0123456789abcdef", "one-key-0123456789abcdef"


def _project(root: Path, port: int, bulk_rate: str = "2/s") -> None:
    root.mkdir(exist_ok=True)
    (root / "predictor.py").write_text(PREDICTOR)
    (root / "front.py").write_text(FRONT)
    (root / "one.key").write_text(ONE + "\n")
    gate = root / "gate"
    (root / "stack.yaml").write_text(
        f"project: {unique_name(root)}\n"
        "prometheus: {scrape_interval: 1s}\n"
        f"gateway:\n  port: {port}\n"
        "  keys:\n"
        '    - {name: gold, key: "${GOLD_KEY}", priority: high}\n'
        f'    - {{name: bulk, key: "${{BULK_KEY}}", rate: {bulk_rate}, burst: 2, priority: low, apis: [alpha]}}\n'
        "    - {name: one, key_file: one.key, concurrency: 1}\n"
        "apis:\n"
        f"  - name: alpha\n    predictor: {{path: predictor.py, threads_per_process: 4, config: {{gate: {gate}}}}}\n"
        "    autoscaling: {min_replicas: 2, max_replicas: 2}\n"
        f"  - name: beta\n    predictor: {{path: predictor.py, config: {{gate: {gate}}}}}\n"
        "  - name: front\n    predictor: {path: front.py}\n    calls: [alpha]\n"
    )


@pytest.fixture
def tenants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GOLD_KEY", GOLD)
    monkeypatch.setenv("BULK_KEY", BULK)
    root, port = tmp_path / "tenants", free_port()
    _project(root, port)
    stack("up", "--local", str(root), cwd=root)
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)


def _post(url: str, key: str | None, payload: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url, json=payload or {}, headers=headers, timeout=30)


def test_keys_are_checked_and_limited_stack_wide(tenants: tuple[Path, int]) -> None:
    root, port = tenants
    alpha, beta = f"http://127.0.0.1:{port}/alpha", f"http://127.0.0.1:{port}/beta"
    assert _post(alpha, GOLD).status_code == 200 and _post(beta, GOLD).status_code == 200
    unknown = _post(alpha, "not-a-key-0123456789")
    assert unknown.status_code == 401 and unknown.json()["error"] == "missing or unknown API key"
    assert _post(alpha, None).status_code == 401
    forbidden = _post(beta, BULK)
    assert forbidden.status_code == 403 and forbidden.json()["key"] == "bulk"
    assert BULK not in forbidden.text

    # bulk's bucket: two at once (burst 2), then 429 with the seconds to wait, whichever replica would answer.
    time.sleep(1.1)  # a full bucket
    codes = [_post(alpha, BULK).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and 429 in codes[2:], codes
    limited = next(r for r in (_post(alpha, BULK) for _ in range(3)) if r.status_code == 429)
    assert limited.json()["key"] == "bulk" and limited.json()["limit"] == "rate"
    assert int(limited.headers["Retry-After"]) >= 1

    # one's concurrency: 1 in flight over the whole stack; its slot is free again as soon as it is answered.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = [pool.submit(_post, alpha, ONE, {"hold": True})]

        def holding() -> bool:
            if held[0].done():  # a probe took the slot first and it was refused: again
                held[0] = pool.submit(_post, alpha, ONE, {"hold": True})
            return _post(beta, ONE).status_code == 429  # another API: the same limit

        until(holding, "one's second request refused while its first is in flight", 10)
        second = _post(alpha, ONE)
        assert second.status_code == 429 and second.json()["limit"] == "concurrency"
        assert second.headers["Retry-After"] == "1"
        (root / "gate").write_text("go")
        assert held[0].result().status_code == 200
    assert [_post(alpha, ONE).status_code for _ in range(20)] == [200] * 20  # back to back: never refused

    # A pipeline's call is its client's: counted under gold on alpha too, and never through gold's limits.
    front = f"http://127.0.0.1:{port}/front"
    assert _post(front, GOLD).status_code == 200

    # Who used what: every request that presented a key, its refusals, its seconds and bytes, by key name.
    def used() -> dict[tuple[str, str], dict]:
        shown = json.loads(stack("usage", "--local", "--json", "-p", str(root), cwd=root).stdout)
        return {(k["name"], k["api"]): k for k in shown["keys"]}

    def counted() -> dict | None:
        rows = used()
        one = rows.get(("one", "alpha"), {})
        wanted = {("gold", "front"), ("gold", "beta"), ("bulk", "alpha"), ("bulk", "beta"), ("one", "beta")}
        gold = rows.get(("gold", "alpha"), {}).get("requests", 0)
        return rows if one.get("requests", 0) >= 22 and gold >= 2 and wanted <= set(rows) else None

    rows = until(counted, lambda: f"stack usage counting every key's requests: {used()}", 30)
    assert rows[("gold", "beta")]["requests"] == 1 and rows[("gold", "front")]["requests"] == 1
    assert rows[("gold", "alpha")]["requests"] == 2  # its own, and front's call for it
    assert rows[("gold", "alpha")]["bytes_in"] > 0 and rows[("gold", "alpha")]["bytes_out"] > 0
    assert rows[("gold", "alpha")]["predict_seconds"] > 0 and rows[("gold", "alpha")]["gpu_seconds"] == 0
    assert rows[("bulk", "beta")]["forbidden"] == 1 and rows[("bulk", "beta")]["requests"] == 1
    bulk = rows[("bulk", "alpha")]
    assert bulk["rate_limited"] >= 2 and bulk["requests"] >= bulk["rate_limited"] + 2, bulk
    assert rows[("one", "beta")]["rate_limited"] >= 1 and rows[("one", "alpha")]["rate_limited"] >= 1
    text = stack("usage", "--local", "-p", str(root), "--since", "1h", cwd=root).stdout
    assert "usage over the last 1h" in text and "gold" in text and GOLD not in text
    # The dashboard's usage table, over its range.
    url = stack("dashboard", "--local", str(root), cwd=root).stdout.strip()
    with chromium() as driver:
        driver.get(url)
        row = wait_for(
            driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-key="bulk"][data-api="beta"]'), "bulk's row", 15
        )
        assert row[0].text.split()[:5] == ["bulk", "beta", "1", "0", "1"], row[0].text
        assert not console_errors(driver)

    # A replica that dies holding one's only slot does not lock the key: the controller lets the lease go
    # once no replica reports it.
    (root / "gate").unlink()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = [pool.submit(_post, alpha, ONE, {"hold": True})]

        def holding_again() -> bool:
            if held[0].done():
                held[0] = pool.submit(_post, alpha, ONE, {"hold": True})
            return _post(beta, ONE).status_code == 429

        until(holding_again, "one's slot taken again", 10)
        for replica in status(root)["apis"][0]["replicas"]:
            os.kill(replica["pid"], signal.SIGKILL)
        until(lambda: _post(beta, ONE).status_code == 200, "one's slot free again after its replica died", 30)
        (root / "gate").write_text("go")


def test_a_bad_key_spec_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOLD_KEY", GOLD)
    monkeypatch.setenv("BULK_KEY", BULK)
    root = tmp_path / "bad"
    _project(root, free_port(), bulk_rate="fast")
    result = stack("validate", str(root), cwd=root, check=False)
    assert result.returncode != 0 and "stack.yaml:7:" in result.stderr and "expected a rate like 5/s" in result.stderr
    text = (root / "stack.yaml").read_text().replace("rate: fast", "rate: 2/s")
    text = text.replace("apis: [alpha]", "apis: [alpah]")
    (root / "stack.yaml").write_text(text.replace("name: one", "name: gold"))
    result = stack("validate", str(root), cwd=root, check=False)
    assert "no API or splitter 'alpah'; did you mean 'alpha'?" in result.stderr
    assert "gateway.keys[0] has this name too" in result.stderr
    monkeypatch.setenv("BULK_KEY", "short")
    (root / "stack.yaml").write_text(text.replace("alpah", "alpha"))
    result = stack("validate", str(root), cwd=root, check=False)
    assert result.returncode == 0 and "a key of 5 characters is easy to guess" in result.stderr
