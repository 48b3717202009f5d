"""Requests aiohttp refuses before any handler runs get the project's JSON error shape too.

aiohttp's HTTP parser answers a request line or header over its limits, too many
headers or a malformed request with a text/plain 400 of its own. `JsonErrorRunner`
is an `AppRunner` whose connections answer those as `{"error": ...}` JSON, with the
same status, still closing the connection as aiohttp does.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs it; raises if bytes were sent
        if status >= 500:
            error = "internal server error"
        else:
            detail = getattr(exc, "message", None) or message or HTTPStatus(status).phrase
            error = f"malformed request: {str(detail).strip()}"
        body = json.dumps({"error": error}).encode()
        response = web.Response(status=plain.status, body=body, content_type="application/json")
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same server; only its connections' error pages differ
        return server
