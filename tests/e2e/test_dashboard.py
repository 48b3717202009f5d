"""The live dashboard (`stack dashboard`): a page the stack's controller serves on 127.0.0.1, drawn in a
real headless Chromium; its numbers are those of `stack status --json` and new traffic shows within 10 s.
Its routes (read-only, a key on Nomad), the Compose proxy (only the dashboard, no socket), the Nomad
plan (behind the gateway with a key), and the page's files (nothing from a CDN) are tested here too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from browser import as_number, card_numbers, chromium, console_errors, snapshot, wait_for
from cli import stack
from common import ROOT, free_port
from docker_stack import containers, docker_ready, remove_project
from nomad_standin import NomadStandIn
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from waits import until

from nomad_schema import schema_errors
from stack.control.autoscale.config import AutoscalerConfig, RoutedApi
from stack.control.dashboard.data import CHARTS, RANGES, Dashboard, Range, _query
from stack.control.dashboard.proxy import proxy_app
from stack.control.dashboard.web import dashboard_routes
from stack.spec import load_spec
from stack.status import AffinityStatus, AutoscalerStatus
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.plan import plan as plan_nomad
from stack.targets.nomad.target import NomadTarget

PREDICTOR = """
from serving import HTTPError


class Predictor:
    def __init__(self, config):
        self.name = config["name"]

    def predict(self, payload):
        if payload.get("fail") == "client":
            raise HTTPError(422, "refused on purpose")
        if payload.get("fail") == "crash":
            raise RuntimeError("crashed on purpose")
        return {"api": self.name, "echo": payload}
"""
COUNTS = ("2xx", "4xx", "5xx")


def write_project(root: Path, project: str, port: int, splitter: bool) -> None:
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    text = (
        f"project: {project}\ngateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: alpha\n    predictor: {path: predictor.py, config: {name: alpha}}\n"
        "    autoscaling: {min_replicas: 1, max_replicas: 3}\n"
    )
    if splitter:
        text += (
            "  - name: beta\n    predictor: {path: predictor.py, config: {name: beta}}\n"
            "    autoscaling: {min_replicas: 2, max_replicas: 2}\n"
            "splitters:\n"
            "  - name: shop\n    apis: [{name: alpha, weight: 100}, {name: beta, weight: 0}]\n"
            # A canary that stays at its first step: too few requests to judge for the test's length.
            "    canary: {api: beta, steps: [25, 100], interval: 1h, min_requests: 100000}\n"
        )
    (root / "stack.yaml").write_text(text)


def traffic(port: int, api: str, ok: int, client: int = 0, crash: int = 0) -> None:
    """Bounded: ok + client + crash requests, one after another."""
    with requests.Session() as session:
        for body, count, code in (({}, ok, 200), ({"fail": "client"}, client, 422), ({"fail": "crash"}, crash, 500)):
            for n in range(count):
                answer = session.post(f"http://127.0.0.1:{port}/{api}", json={**body, "n": n}, timeout=30)
                assert answer.status_code == code, answer.text


def status_of(args: list[str], root: Path) -> dict[str, Any]:
    return json.loads(stack("status", *args, "--json", "-p", str(root), cwd=root).stdout)


def counted(status: dict[str, Any], api: str) -> dict[str, Any]:
    return next(a for a in status["apis"] if a["name"] == api)


def check_page_agrees(driver: Any, url: str, status: dict[str, Any], apis: list[str]) -> dict[str, Any]:
    """The page draws a card per API whose numbers are status's (the counts settled before); the snapshot."""
    driver.get(url)
    fields = ("ready", "desired", *COUNTS)
    for api in apis:
        want = counted(status, api)

        def agrees(d: Any, api: str = api, want: dict[str, Any] = want) -> dict[str, Any] | None:
            page = snapshot(d)
            card = page["cards"].get(api)
            if card is None or any(as_number(card["numbers"].get(f, "")) != want[f] for f in fields):
                return None
            # The replicas chart has its line, from Prometheus' query_range, ending at the ready count.
            replicas = card["charts"].get("replicas", {})
            return page if replicas.get("lines") and float(replicas["last"]) == want["ready"] else None

        page = wait_for(driver, agrees, f"{api}'s card showing {[(f, want[f]) for f in fields]}", 15)
        card = page["cards"][api]
        assert want["endpoint"] in card["text"]
        assert set(card["charts"]) == {"requests/s", "latency p50 / p99", "errors/s (5xx)", "in flight", "replicas"}
        assert ("5xx" in card["bad"]) == (want["5xx"] > 0)
        if want["autoscaler"]:
            assert card["numbers"]["autoscaler-last"]
    assert page["title"] == f"{status['project']} · stack dashboard"
    return page


def check_new_traffic_shows(driver: Any, port: int, api: str, requests_sent: int = 25) -> float:
    """Traffic sent now is on the page within 10 s (its 2xx count); the seconds it took."""
    before = as_number(card_numbers(driver, api)["2xx"]) or 0
    traffic(port, api, requests_sent)
    sent = time.monotonic()
    wait_for(
        driver,
        lambda d: as_number(card_numbers(d, api).get("2xx", "")) == before + requests_sent,
        f"{api}'s 2xx going from {before:g} to {before + requests_sent:g}",
        10,
    )
    took = time.monotonic() - sent

    # And its request-rate chart draws it (a rate needs two scrapes after the traffic: a little later).
    def rate_drawn(d: Any) -> bool:
        chart = snapshot(d)["cards"][api]["charts"]["requests/s"]
        return chart["lines"] > 0 and float(chart["last"] or 0) > 0

    wait_for(driver, rate_drawn, f"{api}'s request rate above zero", 15)
    return took


def check_chart_range(driver: Any, api: str) -> None:
    """Choosing "last 1h" redraws every chart over the last hour, with the same numbers now; the URL
    keeps the choice, so a reload (or a shared link) shows the same range."""
    numbers = card_numbers(driver, api)
    assert snapshot(driver)["range"] == "15m"
    Select(driver.find_element(By.ID, "range")).select_by_visible_text("last 1h")

    def redrawn(d: Any) -> dict[str, Any] | None:
        page = snapshot(d)
        charts = (page["cards"].get(api) or {"charts": {}})["charts"].values()
        return page if page["range"] == "1h" and charts and all(c["from"] == "-1h" for c in charts) else None

    page = wait_for(driver, redrawn, "the charts over the last hour", 10)
    assert "range=1h" in page["search"]
    assert card_numbers(driver, api)["2xx"] == numbers["2xx"]
    # Its points are 15 s apart, on the quarter minute: a stack this young has one within 15 s.
    wait_for(driver, lambda d: snapshot(d)["cards"][api]["charts"]["replicas"]["lines"], "the hour's replicas", 20)
    driver.refresh()
    wait_for(driver, redrawn, "the last hour kept across a reload", 10)


# -- on `stack up --local` ---------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    if shutil.which("prometheus") is None:
        pytest.skip("the dashboard's numbers come from Prometheus (Debian's prometheus)")
    root, port = tmp_path / "shop", free_port()
    write_project(root, "shop", port, splitter=True)
    stack("up", "--local", str(root), cwd=root)
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)


def test_the_local_dashboard_agrees_with_status_and_shows_new_traffic(local: tuple[Path, int], tmp_path: Path) -> None:
    root, port = local
    traffic(port, "alpha", ok=30, client=3, crash=2)
    traffic(port, "beta", ok=10)

    def settled() -> dict[str, Any] | None:
        status = status_of(["--local"], root)
        alpha, beta = counted(status, "alpha"), counted(status, "beta")
        done = [alpha[c] for c in COUNTS] == [30, 3, 2] and beta["2xx"] == 10 and beta["ready"] == 2
        return status if done else None

    status = until(settled, "Prometheus counting the requests", 60)
    url = stack("dashboard", "--local", str(root), cwd=root).stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard/", url), url

    with chromium() as driver:
        page = check_page_agrees(driver, url, status, ["alpha", "beta"])
        assert "autoscaled 1–3" in page["cards"]["alpha"]["text"]
        # The splitter's shares as the gateway applies them, and its canary's progress, as status says.
        (shop,) = status["splitters"]
        canary = shop["canary"]
        total = sum(shop["weights"].values())
        card = page["splitters"]["shop"]
        assert card["shares"] == [f"{a} {round(w * 100 / total)}%" for a, w in shop["weights"].items()]
        assert card["shares"] == ["alpha 75%", "beta 25%"]  # the canary's first step
        assert f"canary beta: {canary['phase']} at {canary['weight']}%" in card["text"], card
        took = check_new_traffic_shows(driver, port, "alpha")
        check_chart_range(driver, "alpha")
        assert not console_errors(driver), console_errors(driver)
    print(f"new traffic on the page after {took:.1f}s")


def test_stack_dashboard_open_starts_the_browser_and_without_a_stack_says_so(
    local: tuple[Path, int], tmp_path: Path
) -> None:
    root, _ = local
    seen = tmp_path / "opened.txt"
    opener = tmp_path / "opener"
    opener.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
    opener.chmod(opener.stat().st_mode | stat.S_IXUSR)
    ran = stack("dashboard", "--local", str(root), "--open", cwd=root, env={"BROWSER": f"{opener} %s"})
    until(seen.exists, "the browser being started", 10)
    assert seen.read_text().strip() == ran.stdout.strip()

    other = tmp_path / "idle"
    write_project(other, "idle", free_port(), splitter=False)
    refused = stack("dashboard", "--local", str(other), cwd=other, check=False)
    assert refused.returncode != 0 and "stack up --local" in refused.stderr, refused.stderr


GIB = 1024**3


def test_the_local_dashboard_shows_each_gpus_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the host's GPUs from the stand-in nvidia-smi, the replicas' NVML from the stand-in
    pynvml (tests/fakes); the page's GPU charts are what the replicas export, as `stack status` says."""
    if shutil.which("prometheus") is None:
        pytest.skip("the GPU charts come from Prometheus (Debian's prometheus)")
    fakes = ROOT / "tests" / "fakes"
    uuid = "GPU-5e1f0000-0000-4000-8000-00000000beef"
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NVIDIA_SMI", f"0, {uuid}, NVIDIA L4, 23034\n")
    monkeypatch.setenv("PYTHONPATH", str(fakes))
    nvml = [{"uuid": uuid, "total": 22 * GIB, "used": 5.5 * GIB, "util": 37, "procs": [["self", 5 * GIB]]}]
    monkeypatch.setenv("FAKE_NVML", json.dumps(nvml))
    root, port = tmp_path / "gpubox", free_port()
    write_project(root, "gpubox", port, splitter=False)
    (root / "stack.yaml").write_text(
        (root / "stack.yaml")
        .read_text()
        .replace(
            "    autoscaling: {min_replicas: 1, max_replicas: 3}\n",
            "    compute: {gpu: 0.5}\n    autoscaling: {min_replicas: 1, max_replicas: 1}\n",
        )
    )
    try:
        stack("up", "--local", str(root), cwd=root)

        def gpu_seen() -> dict[str, Any] | None:
            (gpu,) = status_of(["--local"], root)["gpus"]
            return gpu if gpu["utilization"] is not None else None

        gpu = until(gpu_seen, "the replica's GPU metrics in stack status", 60)
        assert gpu["uuid"] == uuid and gpu["utilization"] == pytest.approx(0.37)
        url = stack("dashboard", "--local", str(root), cwd=root).stdout.strip()
        with chromium() as driver:
            driver.get(url)
            charts = wait_for(driver, lambda d: snapshot(d)["gpus"].get(uuid), f"GPU {uuid} on the page", 15)
            assert float(charts[f"GPU {uuid} utilization"]) == pytest.approx(gpu["utilization"] * 100)
            assert float(charts[f"GPU {uuid} memory"]) == pytest.approx(5.5)  # GiB
            assert not console_errors(driver), console_errors(driver)
    finally:
        stack("down", "--local", str(root), cwd=root, check=False)


# -- on Compose ------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.skipif(docker_ready() is not None, reason=str(docker_ready()))
def test_the_compose_dashboard_agrees_with_status_and_shows_new_traffic(tmp_path: Path) -> None:
    root, port = tmp_path / "cdash", free_port()
    name = f"cd{int(time.time() * 1000) % 10**8}"
    write_project(root, name, port, splitter=False)
    try:
        refused = stack("dashboard", str(root), cwd=root, check=False)  # nothing is up yet
        assert refused.returncode != 0 and "is not running" in refused.stderr and "stack up" in refused.stderr
        stack("up", str(root), cwd=root)
        traffic(port, "alpha", ok=20, client=2, crash=1)

        def settled() -> dict[str, Any] | None:
            status = status_of([], root)
            return status if [counted(status, "alpha")[c] for c in COUNTS] == [20, 2, 1] else None

        status = until(settled, "Prometheus counting the requests", 90)
        url = stack("dashboard", str(root), cwd=root).stdout.strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard/", url), url
        # Its own container, published on 127.0.0.1 only, without the Docker socket; only the dashboard.
        (proxy,) = [c for c in containers(name) if c["Config"]["Labels"].get("stack.role") == "dashboard"]
        assert not [m for m in proxy["Mounts"] if "docker.sock" in m["Source"]]
        bindings = [b for bs in proxy["HostConfig"]["PortBindings"].values() for b in bs]
        assert bindings and {b["HostIp"] for b in bindings} == {"127.0.0.1"}
        base = url.removesuffix("/dashboard/")
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 404
        assert requests.post(url, timeout=10).status_code == 405  # read-only
        with chromium() as driver:
            check_page_agrees(driver, url, status, ["alpha"])
            took = check_new_traffic_shows(driver, port, "alpha")
            assert not console_errors(driver), console_errors(driver)
        print(f"new traffic on the page after {took:.1f}s")
    finally:
        remove_project(root, name)


# -- on Nomad: planned and contract-tested ---------------------------------------------------------


def test_nomad_serves_the_dashboard_behind_the_gateway_with_a_key(tmp_path: Path, standin: NomadStandIn) -> None:
    root = tmp_path / "nd"
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    (root / "stack.yaml").write_text(
        "project: nd\ngateway: {port: 8443, api_keys: [k-one-key-1]}\n"
        "apis:\n  - name: alpha\n    predictor: {path: predictor.py, config: {name: alpha}}\n"
    )
    loaded = load_spec(root)
    target = NomadTarget(loaded, settings=NomadSettings.from_env(standin.address))
    with pytest.raises(Exception, match="stack up --nomad"):
        target.dashboard_url()  # no controller yet
    plan = plan_nomad(loaded, nomad_addr=standin.address)
    request = json.loads(plan.files["nd-autoscaler.json"])
    assert schema_errors(request) == []
    NomadApi(NomadSettings.from_env(standin.address)).register(request["Job"])
    services = {s["Name"]: s for g in request["Job"]["TaskGroups"] for s in g.get("Services") or []}
    tags = services["nd-dashboard"]["Tags"]
    assert "traefik.http.routers.nd-dashboard.rule=PathPrefix(`/_stack/dashboard`)" in tags
    assert "traefik.http.middlewares.nd-dashboard.stripprefix.prefixes=/_stack" in tags
    url = target.dashboard_url()
    assert url.endswith(":8443/_stack/dashboard/?key=API_KEY") and "k-one-key-1" not in url

    # Without API keys there is no dashboard route, and the URL says how to get one.
    (root / "stack.yaml").write_text((root / "stack.yaml").read_text().replace(", api_keys: [k-one-key-1]", ""))
    keyless = plan_nomad(load_spec(root), nomad_addr=standin.address)
    job = json.loads(keyless.files["nd-autoscaler.json"])["Job"]
    assert "nd-dashboard" not in {s["Name"] for g in job["TaskGroups"] for s in g.get("Services") or []}
    with pytest.raises(Exception, match=r"gateway\.api_keys"):
        NomadTarget(load_spec(root), settings=NomadSettings.from_env(standin.address)).dashboard_url()


# -- the routes, the proxy, the page's files ---------------------------------------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def test_the_routes_read_only_keyed_and_failing_clearly() -> None:
    calls = {"n": 0}

    async def document(over: Range) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("Prometheus went away")
        return {"project": "p", "apis": [], "range": over.name}

    async def scenario() -> None:
        app = web.Application()
        app.router.add_routes(dashboard_routes(document, keys=lambda: [b"k-1", b"k-2"]))
        runner, url = await _serve(app)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/dashboard/") as page:
                    assert page.status == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
                    assert '<script src="app.js"' in await page.text()
                async with session.get(f"{url}/dashboard?key=k-2", allow_redirects=False) as bare:
                    assert bare.status == 302 and bare.headers["Location"] == "dashboard/?key=k-2"
                async with session.get(f"{url}/dashboard/secrets.txt") as unknown:
                    assert unknown.status == 404 and "no such file" in (await unknown.json())["error"]
                async with session.get(f"{url}/dashboard/../../etc/passwd") as escape:
                    assert escape.status == 404
                for key in (None, "wrong"):
                    async with session.get(f"{url}/dashboard/data.json", params={"key": key} if key else {}) as no:
                        assert no.status == 401 and "key" in (await no.json())["error"]
                async with session.get(f"{url}/dashboard/data.json", params={"key": "k-2"}) as good:
                    assert good.status == 200 and (await good.json()) == {"project": "p", "apis": [], "range": "15m"}
                async with session.get(f"{url}/dashboard/data.json", params={"key": "k-2", "range": "nope"}) as bad:
                    assert bad.status == 400 and "15m, 1h, 6h, 24h" in (await bad.json())["error"]
                headers = {"Authorization": "Bearer k-1"}
                async with session.get(f"{url}/dashboard/data.json", headers=headers) as failed:  # the 2nd
                    assert failed.status == 500 and "Prometheus went away" in (await failed.json())["error"]
                async with session.post(f"{url}/dashboard/data.json", headers=headers) as post:
                    assert post.status == 405
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_the_compose_proxy_forwards_only_the_dashboard_and_says_when_the_controller_is_down() -> None:
    async def document(over: Range) -> dict[str, Any]:
        return {"project": "p", "range": over.name}

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text="secret_metric 1")

    async def scenario() -> None:
        upstream = web.Application()
        upstream.router.add_routes(dashboard_routes(document))
        upstream.router.add_get("/metrics", metrics)
        up_runner, up_url = await _serve(upstream)
        runner, url = await _serve(proxy_app(up_url))
        dead_runner, dead_url = await _serve(proxy_app(f"http://127.0.0.1:{free_port()}"))
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/dashboard/data.json", params={"range": "6h"}) as data:
                    assert data.status == 200 and (await data.json()) == {"project": "p", "range": "6h"}
                async with session.get(f"{url}/dashboard/") as page:
                    assert "Content-Security-Policy" in page.headers
                async with session.get(f"{url}/") as root:
                    assert root.status == 200 and "stack dashboard" in await root.text()
                for path in ("/metrics", "/scale", "/dashboardx"):
                    async with session.get(f"{url}{path}") as refused:
                        assert refused.status == 404, path
                async with session.get(f"{dead_url}/dashboard/data.json") as down:
                    assert down.status == 502 and "not reachable" in (await down.json())["error"]
        finally:
            for r in (runner, dead_runner, up_runner):
                await r.cleanup()

    asyncio.run(scenario())


def test_the_page_ships_in_the_package_and_loads_nothing_from_elsewhere() -> None:
    static = resources.files("stack.control.dashboard").joinpath("static")
    names = sorted(p.name for p in static.iterdir())
    assert names == ["app.css", "app.js", "index.html"]
    for name in names:
        text = static.joinpath(name).read_text()
        # No CDN, no external font or image: every URL the page loads is its own (relative).
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        assert "@import" not in text and "url(http" not in text, name
        assert not re.search(r"fetch\(\s*[\"']https?:", text), name


def test_an_api_with_no_series_is_zero_only_while_prometheus_scraped() -> None:
    queries = {chart.key: _query(chart, "alpha") for chart in CHARTS}
    assert 'api="alpha"' in queries["replicas"] and "vector(0)" not in " ".join(queries.values())
    assert queries["replicas"].endswith("or 0 * max(up)")


class _Source:
    config = AutoscalerConfig("p", 1.0, [], [RoutedApi("alpha", "p-alpha", "/alpha")])

    def status(self) -> dict[str, AutoscalerStatus]:
        return {}

    async def replicas(self, api: str) -> None:
        return None

    def splitters(self) -> list[Any]:
        return []

    def events(self, api: str) -> list[str]:
        return [f"12:00:0{i} replica {api}-{i} replaced: stuck: predict running for 45s" for i in range(10)]

    def affinity(self) -> dict[str, AffinityStatus]:
        return {"alpha": AffinityStatus({"iris": ["alpha-1"]}, {"alpha-1": ["iris"]}, {"iris": 0.5}, 0.9)}


def test_each_chart_range_asks_prometheus_for_its_window_step_and_rate() -> None:
    """The last 15 minutes unless the page asks; every chart of a range covers the same window, one point a
    step, rates over at least two steps; the document says the range so the page can label its axis."""
    asked: list[dict[str, str]] = []

    async def query_range(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": []}})

    async def query(request: web.Request) -> web.Response:
        # a named key's counter, as the replicas export it (stack usage reads it too)
        asked_query = request.query["query"]
        rows = []
        if asked_query.startswith("last_over_time(stack_key_requests_total"):
            labels = {"__name__": "stack_key_requests_total", "api": "alpha", "key": "gold", "code": "200"}
            rows = [{"metric": labels, "value": [1_000_000, "7"]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": rows}})

    async def scenario() -> dict[str, dict[str, Any]]:
        prometheus = web.Application()
        prometheus.router.add_get("/api/v1/query_range", query_range)
        prometheus.router.add_get("/api/v1/query", query)
        runner, url = await _serve(prometheus)
        try:
            async with aiohttp.ClientSession() as session:
                board = Dashboard(_Source(), session, lambda: url, clock=lambda: 1_000_000.0)
                return {name: await board.document(over) for name, over in RANGES.items()}
        finally:
            await runner.cleanup()

    documents = asyncio.run(scenario())
    for name, over in RANGES.items():
        doc = documents[name]
        assert (doc["range"], doc["window_s"], doc["step_s"]) == (name, over.window, over.step)
        assert doc["ranges"] == ["15m", "1h", "6h", "24h"]
        # Why replicas were replaced, as `stack status API` says it: the newest eight.
        assert doc["apis"][0]["events"][-1] == "12:00:09 replica alpha-9 replaced: stuck: predict running for 45s"
        assert len(doc["apis"][0]["events"]) == 8
        assert doc["apis"][0]["affinity"]["models"] == {"iris": ["alpha-1"]}  # the controller's, as status shows
        (gold,) = doc["usage"]  # each named key's use over the range, as `stack usage` shows it
        assert (gold["name"], gold["api"], gold["requests"]) == ("gold", "alpha", 7)
    by_step = {}
    for query in asked:
        if 'api="alpha"' in query["query"]:
            by_step.setdefault(float(query["step"]), []).append(query)
    assert sorted(by_step) == [5.0, 15.0, 75.0, 300.0]
    for over in RANGES.values():
        queries = by_step[over.step]
        assert len(queries) == len(CHARTS)
        assert {float(q["end"]) - float(q["start"]) for q in queries} == {over.window}
        assert all(float(q["end"]) % over.step == 0 for q in queries)  # aligned: no shimmer between reads
        rate = f"[{max(60, 2 * over.step):g}s]"
        assert all(rate in q["query"] for q in queries if "rate(" in q["query"]), (rate, queries)
