"""The dashboard's routes on the controller's HTTP endpoint (GET only: the page reads, never changes).

    GET /dashboard/            the page
    GET /dashboard/{file}      its script and style sheet (stack/dashboard/static)
    GET /dashboard/data.json   the document the page draws (stack.control.dashboard.data);
                               ?range=15m|1h|6h|24h: the charts' history (15m unless asked)

With `keys` (the Nomad controller, reached through the gateway), data.json
asks for one of them as `?key=` or `Authorization: Bearer`; the page passes
the key of its own URL on. The page and its files hold no data and need none.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from stack.control.dashboard.data import Document, chart_range

LOGGER = logging.getLogger("stack.control.dashboard")
PATH = "/dashboard/"
FILES = {  # name -> content type: nothing else is served
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
# The page runs nothing it did not bring: no CDN, no inline script, no frames.
POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def _file(name: str) -> bytes:
    return resources.files("stack.control.dashboard").joinpath("static", name).read_bytes()


def dashboard_routes(document: Document, keys: Callable[[], list[bytes]] | None = None) -> list[web.RouteDef]:
    """The dashboard's routes, to add to an aiohttp application."""
    files = {name: _file(name) for name in FILES}

    def refused(request: web.Request) -> web.Response | None:
        if keys is None:
            return None
        given = (request.query.get("key") or request.headers.get("Authorization", "").removeprefix("Bearer ")).encode()
        if given and any(hmac.compare_digest(given, key) for key in keys()):
            return None
        return web.json_response({"error": "the dashboard needs its key: add ?key=..."}, status=401)

    def headers(content_type: str) -> dict[str, str]:
        return {
            "Content-Type": f"{content_type}; charset=utf-8",
            "Cache-Control": "no-store",
            "Content-Security-Policy": POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }

    async def page(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        if name not in files:
            return web.json_response({"error": f"no such file: {name}"}, status=404)
        return web.Response(body=files[name], headers=headers(FILES[name]))

    async def data(request: web.Request) -> web.Response:
        denied = refused(request)
        if denied is not None:
            return denied
        try:
            over = chart_range(request.query.get("range"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            body = await document(over)
        except Exception as exc:  # the page shows why, and tries again at its next refresh
            LOGGER.exception("the dashboard's data failed")
            return web.json_response({"error": f"the dashboard's data failed: {exc}"}, status=500)
        response = web.json_response(body)
        response.headers.update({"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
        return response

    async def bare(request: web.Request) -> web.Response:
        # Relative: behind a gateway's path prefix (Nomad's /_stack/dashboard) it stays under the prefix.
        raise web.HTTPFound("dashboard/" + (f"?{request.query_string}" if request.query_string else ""))

    return [
        web.get("/dashboard", bare),
        web.get(PATH + "data.json", data),
        web.get(PATH, page),
        web.get(PATH + "{name}", page),
    ]
