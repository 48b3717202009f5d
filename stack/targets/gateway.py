"""Wait until a request through the gateway reaches an API — the one check every target makes
before it says an API is up.

Traefik shows a new route on its API, or a container as healthy, up to a second
before its routers send requests there (measured: `stack up` returned while the
first requests still got "no available server"), so only a real request counts.
"""

from __future__ import annotations

import time
from dataclasses import replace

import requests

from stack.errors import StackError
from stack.routes import PROBE_HEADER
from stack.status import ApiPhase, ApiStatus


def readiness_url(gateway_port: int, endpoint: str, host: str = "127.0.0.1") -> str:
    """The API's status route through the gateway (its probes are not reachable there)."""
    return f"http://{host}:{gateway_port}{endpoint}"


def answered_by_replica(response: requests.Response) -> bool:
    """A ready replica's status answer, or its 401 when the API needs a key: never the gateway's own."""
    if response.status_code == 401:
        return True
    if response.status_code != 200:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "ready"


def answered_by_jobs(response: requests.Response) -> bool:
    """A BatchAPI's endpoint answered by the controller (its list of jobs, or its 401 without a key)."""
    if response.status_code == 401:
        return True
    try:
        return response.status_code == 200 and isinstance(response.json(), list)
    except ValueError:
        return False


def wait_until_routed(url: str, timeout: float = 30.0, interval: float = 0.05, jobs: bool = False) -> bool:
    """True once `url` (an API's status route through the gateway) is answered by a ready replica
    (`jobs`: a BatchAPI's endpoint, by the controller)."""
    answered = answered_by_jobs if jobs else answered_by_replica
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if answered(requests.get(url, timeout=2, headers={PROBE_HEADER: "1"})):
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False


def wait_for_batch_apis(endpoints: list[str], gateway_port: int, timeout: float = 30.0) -> None:
    """Each BatchAPI's endpoint answers through the gateway (its route to the controller is live)."""
    for endpoint in endpoints:
        url = readiness_url(gateway_port, endpoint)
        if not wait_until_routed(url, timeout, jobs=True):
            raise StackError(f"the gateway does not route {url} to the stack's controller after {timeout:.0f}s")


def check_routed(status: ApiStatus, gateway_port: int, gateway_down: str = "") -> ApiStatus:
    """`live` only if a request through the gateway reaches a replica; otherwise say the gateway is the
    problem (`gateway_down`: what the target knows of a gateway that is not running, and the fix)."""
    if status.status != ApiPhase.LIVE or status.ready == 0:
        return status
    url = readiness_url(gateway_port, status.endpoint)
    try:
        if answered_by_replica(requests.get(url, timeout=2, headers={PROBE_HEADER: "1"})):
            return status
    except requests.RequestException:
        pass
    return replace(
        status,
        status=ApiPhase.ERROR,
        error=f"{status.ready} replica(s) ready, but a request through the gateway ({url}) does not reach them"
        + (f": the gateway is not running ({gateway_down})" if gateway_down else ""),
    )
