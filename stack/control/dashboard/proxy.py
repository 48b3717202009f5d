"""Compose: the dashboard on 127.0.0.1, without publishing the controller's port.

The controller holds the Docker socket and faces no network; this process
(its own container, no socket, no privileges, its port published on
127.0.0.1 only) forwards the dashboard's GETs to the controller over the
stack's network and nothing else.

    python -m stack.control.dashboard.proxy --upstream http://autoscaler:9100 --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
FORWARDED = ("Content-Type", "Cache-Control", "Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")


def proxy_app(upstream: str) -> web.Application:
    async def startup(app: web.Application) -> None:
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def cleanup(app: web.Application) -> None:
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        path = request.match_info["tail"]
        if path and path not in ("dashboard", "dashboard/") and not path.startswith("dashboard/"):
            return web.json_response({"error": "only the dashboard is here: /dashboard/"}, status=404)
        url = f"{upstream.rstrip('/')}/{path or 'dashboard/'}"
        try:
            async with request.app[SESSION].get(url, params=request.query, allow_redirects=False) as answer:
                body = await answer.read()
                headers = {k: answer.headers[k] for k in FORWARDED if k in answer.headers}
                if "Location" in answer.headers:
                    headers["Location"] = answer.headers["Location"]
                return web.Response(status=answer.status, body=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.json_response({"error": f"the stack's controller is not reachable: {exc}"}, status=502)

    app = web.Application()
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/{tail:.*}", forward)
    return app


async def _serve(upstream: str, host: str, port: int) -> None:
    runner = web.AppRunner(proxy_app(upstream), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the controller's HTTP endpoint")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    asyncio.run(_serve(args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
