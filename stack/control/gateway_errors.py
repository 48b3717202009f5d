"""The gateway's own errors, in the project's JSON shape.

Traefik answers some requests itself, as text: no API at this path (404), no
replica ready (503), a replica that broke the connection (502). The routes send
those here instead (stack.routes): a tiny aiohttp app that the local supervisor
and the Compose controller serve beside the gateway.

- `/__stack/gateway-error/{status}`: what Traefik's `errors` middleware asks for
  on a 502 (a replica's own 4xx/5xx JSON, its 504s included, passes untouched);
- `/__stack/too-large/{limit}`: a request declaring a body over the API's max_body_size (413,
  the replica's own words: the gateway refuses it before reading the body);
- `/__stack/no-route/...`: the catch-all router, for paths no API serves;
- `/__stack/activate/<api>/...`: an API scaled to zero (stack.control.activator);
- anything else: an API whose replicas are all gone (its service points here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from stack.routes import ACTIVATE, TOO_LARGE

if TYPE_CHECKING:
    from stack.control.activator import Activator

PREFIX = "/__stack"
MAX_BODY = 1024**3  # a held request's body, forwarded as it came (the replica applies max_body_size)
MESSAGES = {
    404: "no API is served at this path",
    502: "the replica failed while answering this request (bad gateway); it is safe to retry if the request is",
    503: "no replica of this API is ready; try again shortly",
    504: "the replica did not answer in time (gateway timeout)",
}


def _error(status: int, extra: dict[str, str] | None = None) -> web.Response:
    message = MESSAGES.get(status, "gateway error")
    if status == 502:
        message += " idempotent"
    return web.json_response({"error": message}, status=status, headers=extra)


async def _gateway_error(request: web.Request) -> web.Response:
    try:
        status = int(request.match_info["status"])
    except ValueError:
        status = 502
    status = status if 400 <= status <= 599 else 502
    request_id = request.headers.get("X-Request-ID", "")
    if not request_id or len(request_id) > 200:
        return _error(status)
    # Traefik passes the client's request's headers on: the answer carries its id, as a replica's would.
    message = MESSAGES.get(status, "gateway error") + (" idempotent" if status == 502 else "")
    return web.json_response(
        {"error": message, "request_id": request_id}, status=status, headers={"X-Request-ID": request_id}
    )


async def _too_large(request: web.Request) -> web.Response:
    limit = request.match_info["limit"]
    length = request.headers.get("Content-Length", "")
    size = f"of {length} bytes " if length.isdigit() else ""
    return web.json_response({"error": f"request body {size}exceeds max_body_size of {limit} bytes"}, status=413)


async def _no_route(request: web.Request) -> web.Response:
    return _error(404)


async def _no_replica(request: web.Request) -> web.Response:
    return _error(503, {"Retry-After": "1"})


def error_app(activator: Activator | None = None, extra: list[web.RouteDef] | None = None) -> web.Application:
    """`extra`: more of the controller's own routes (a BatchAPI's jobs, stack.control.batch.jobs)."""
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_routes(extra or [])
    app.router.add_route("*", PREFIX + "/gateway-error/{status}", _gateway_error)
    app.router.add_route("*", TOO_LARGE + "/{limit:[0-9]+}", _too_large)
    if activator is not None:
        app.router.add_route("*", ACTIVATE + "/{api}{tail:(/.*)?}", activator.handle)
    app.router.add_route("*", PREFIX + "/no-route{tail:.*}", _no_route)
    app.router.add_route("*", "/{tail:.*}", _no_replica)
    return app


async def serve_errors(
    host: str, port: int, activator: Activator | None = None, extra: list[web.RouteDef] | None = None
) -> web.AppRunner:
    runner = web.AppRunner(error_app(activator, extra), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
