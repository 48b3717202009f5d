"""Talking to the local supervisor's control API, over its unix socket.

The socket is 0600 in a 0700 directory: only the user who started the stack
can scale it, reload it or shut it down (a TCP port on 127.0.0.1 would take
those from any local user).
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import aiohttp

from stack.errors import StackError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def call(socket_path: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> dict[str, Any]:
    """One request to the supervisor; its JSON answer, or StackError with its message."""
    connection = _UnixConnection(socket_path, timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data: dict[str, Any] = json.loads(response.read() or b"{}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise StackError(f"the local supervisor does not answer on {socket_path}: {exc}") from exc
    finally:
        connection.close()
    if response.status >= 400:
        raise StackError(str(data.get("error", f"HTTP {response.status}")))
    return data


async def call_async(socket_path: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as session,
        session.request(method, f"http://localhost{path}", json=body, timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        data: dict[str, Any] = await r.json(content_type=None)
        if r.status >= 400:
            raise StackError(str(data.get("error", f"HTTP {r.status}")))
        return data
