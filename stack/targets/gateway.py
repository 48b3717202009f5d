"""Wait until a request through the gateway reaches an API — the one check every target makes
before it says an API is up.

Traefik shows a new route on its API, or a container as healthy, up to a second
before its routers send requests there (measured: `stack up` returned while the
first requests still got "no available server"), so only a real request counts.
"""

from __future__ import annotations

import time

import requests


def readiness_url(gateway_port: int, endpoint: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{gateway_port}{endpoint.rstrip('/')}/readyz"


def wait_until_routed(url: str, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """True once `url` (an API's /readyz through the gateway) answers 200; False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False
