"""The ceiling: a bare aiohttp handler doing the same JSON parse and serialize, on uvloop as ours runs."""

import json
import sys

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    payload = json.loads(await request.read())
    return web.Response(text=json.dumps(payload), content_type="application/json")


app = web.Application()
app.router.add_post("/", echo)
try:
    import uvloop
except ImportError:  # the same loop as ours: asyncio's when uvloop is not installed
    uvloop = None
web.run_app(
    app,
    host="127.0.0.1",
    port=int(sys.argv[1]),
    access_log=None,
    print=None,
    loop=uvloop.new_event_loop() if uvloop else None,
)
