"""Prometheus' HTTP API, the one place that asks it: instant queries from async and blocking code.

Values arrive as strings and may be NaN; a NaN series is left out, so "no
data" is always an empty answer, never a zero.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import requests

Rows = list[tuple[dict[str, str], float]]


def _rows(body: Any) -> Rows:
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ValueError(body.get("error", "query failed") if isinstance(body, dict) else "not a Prometheus answer")
    rows = []
    for row in body["data"]["result"]:
        value = float(row["value"][1])
        if not math.isnan(value):
            rows.append((row["metric"], value))
    return rows


async def query_vector(session: aiohttp.ClientSession, url: str, query: str, timeout: float = 5.0) -> Rows:
    """An instant query's series (labels, value). Raises aiohttp.ClientError, TimeoutError or ValueError."""
    async with session.get(
        f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        body = await response.json(content_type=None)
    try:
        return _rows(body)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"unexpected answer from Prometheus: {exc}") from None


def query(url: str, query: str, timeout: float = 3.0) -> Rows:
    """The same from blocking code (the CLI). Raises requests.RequestException or ValueError."""
    body = requests.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=timeout).json()
    try:
        return _rows(body)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"unexpected answer from Prometheus: {exc}") from None
