"""The autoscaler's input, read from a real Prometheus scraping a real replica.

Prometheus returns sample values as strings (NaN included) and an empty
result for a series it has not got: neither may ever read as zero load.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
from common import PREDICTORS, Server, ServerFactory, free_port
from waits import until_seen

from loadgen import Load
from stack.control.autoscale.signal import PrometheusSignal, Signal

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Prometheus is not on PATH (.ci/run installs Debian's package)"
)


def start_scraped(tmp_path: Path, servers: ServerFactory) -> tuple[Server, str]:
    """A replica, and a real Prometheus scraping it every second (ready to answer queries)."""
    replica = servers.serving(PREDICTORS / "quarter_second.py", api="slow")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: predictors\n    static_configs: [{{targets: ['127.0.0.1:{replica.port}']}}]\n"
    )
    port = free_port()
    prometheus = servers.start(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            "--web.listen-address=127.0.0.1:{port}",
        ],
        port=port,
        wait_ready=False,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise AssertionError(prometheus.logs())
    return replica, url


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """One replica and Prometheus for the tests that only read them."""
    factory = ServerFactory(tmp_path_factory.mktemp("scraped"))
    yield start_scraped(factory.tmp_path, factory)
    factory.close()


@pytest.fixture
def scraped(tmp_path: Path, servers: ServerFactory) -> tuple[Server, str]:
    """Their own replica and Prometheus, for a test that stops one."""
    return start_scraped(tmp_path, servers)


def read(url: str, api: str = "slow", window: float = 3.0) -> Signal:
    async def go() -> Signal:
        async with aiohttp.ClientSession() as session:
            return await PrometheusSignal(url, session, scrape_interval=1.0).read(api, window, 1.0)

    return asyncio.run(go())


def wait_for_signal(url: str, check: Callable[[Signal], bool], timeout: float = 30) -> Signal:
    return until_seen(lambda: read(url), check, "the signal to change", timeout, every=0.5)


def test_in_flight_under_load_and_idle(shared: tuple[Server, str]) -> None:
    replica, url = shared
    idle = wait_for_signal(url, lambda s: s.in_flight is not None)
    assert idle.in_flight == 0.0  # a real zero: the series exists and says so
    with Load(replica.url + "/", concurrency=4, max_seconds=60):
        busy = wait_for_signal(url, lambda s: s.in_flight is not None and s.in_flight > 3.5)
    assert busy.in_flight is not None and 3.5 < busy.in_flight <= 4.0, busy


def test_an_api_without_series_is_missing_data_not_zero(shared: tuple[Server, str]) -> None:
    _, url = shared
    wait_for_signal(url, lambda s: s.in_flight is not None)
    signal = read(url, api="nosuchapi")
    assert signal.in_flight is None and "no in-flight series" in signal.missing_reason


def test_prometheus_unreachable_is_missing_data() -> None:
    signal = read(f"http://127.0.0.1:{free_port()}")
    assert signal.in_flight is None and "Prometheus query failed" in signal.missing_reason


def test_a_replica_gone_is_missing_data(scraped: tuple[Server, str]) -> None:
    replica, url = scraped
    wait_for_signal(url, lambda s: s.in_flight is not None)
    replica.stop()
    # The scrape fails, Prometheus marks the series stale: no data, never "0 in flight".
    gone = wait_for_signal(url, lambda s: s.in_flight is None, timeout=30)
    assert gone.in_flight is None and gone.missing_reason, gone


def test_nan_is_missing_data(shared: tuple[Server, str]) -> None:
    _, url = shared

    async def go() -> float | None:
        async with aiohttp.ClientSession() as session:
            return await PrometheusSignal(url, session, 1.0)._query("vector(0) / 0")

    assert (
        requests.get(f"{url}/api/v1/query", params={"query": "vector(0) / 0"}, timeout=5).json()["data"]["result"][0][
            "value"
        ][1]
        == "NaN"
    )
    assert asyncio.run(go()) is None


def test_values_carried_across_a_prometheus_restart_are_no_data(tmp_path: Path, servers: ServerFactory) -> None:
    """Killed without warning, Prometheus writes no stale markers: for 5 minutes it would carry each
    series' last value across its own outage. The signal holds instead, until the gap leaves the window."""
    replica = servers.serving(PREDICTORS / "quarter_second.py", api="slow")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: predictors\n    static_configs: [{{targets: ['127.0.0.1:{replica.port}']}}]\n"
    )
    port = free_port()
    command = [
        shutil.which("prometheus") or "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        "--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    window = 15.0
    first = servers.start(command, port=port, wait_ready=False)
    with Load(replica.url + "/", concurrency=4, max_seconds=60):
        busy = wait_for_signal(url, lambda s: s.in_flight is not None and s.in_flight > 3.0)
        assert busy.in_flight is not None and busy.in_flight > 3.0
        first.stop(signal.SIGKILL)
    outage_end = time.monotonic() + 5  # an outage of 5 scrape intervals, while the load is gone
    while time.monotonic() < outage_end:
        time.sleep(0.2)
    servers.start(command, port=port, wait_ready=False)
    fresh = wait_for_signal(url, lambda s: "no data for" in s.missing_reason or s.in_flight is not None)
    after = read(url, window=window)
    assert after.in_flight is None and "no data for" in after.missing_reason, after
    # Once the window holds only fresh samples, the real (idle) value comes back; never the carried 4.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = read(url, window=window)
        assert after.in_flight is None or after.in_flight < 1.0, after
        if after.in_flight is not None:
            break
        time.sleep(0.5)
    assert after.in_flight is not None and after.in_flight < 1.0, (fresh, after)
