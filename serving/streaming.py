"""Stream a generator's items to the client: Server-Sent Events or chunked.

SSE when the client's Accept header names `text/event-stream`; NDJSON of every
item when it names `application/x-ndjson` (another API's calls); otherwise a
chunked body whose type follows the first item (str -> text/plain, bytes ->
octet-stream, anything else -> one JSON document per line, application/x-ndjson).
A plain generator is advanced on the predictor's thread pool so a slow
`next()` never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import web

from serving.codec import dumps

_DONE = object()
RunInThread = Callable[[Callable[[], Any]], "asyncio.Future[Any]"]


def is_stream(result: Any) -> bool:
    return inspect.isgenerator(result) or inspect.isasyncgen(result)


async def iterate(result: Any, run: RunInThread) -> AsyncIterator[Any]:
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
        return
    sync_iter: Iterator[Any] = result
    step = functools.partial(contextvars.copy_context().run, next, sync_iter, _DONE)  # the request's context
    while (item := await run(step)) is not _DONE:
        yield item


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def wants_ndjson(request: web.Request) -> bool:
    """The client (another API's `apis` handle, serving.calls) takes every item as a JSON line: str
    items then keep their boundaries and type, which a chunked text body cannot."""
    return "application/x-ndjson" in request.headers.get("Accept", "")


def json_line(item: Any) -> bytes:
    return (dumps(item) + "\n").encode()


def sse_event(item: Any) -> bytes:
    text = item.decode() if isinstance(item, (bytes, bytearray)) else item if isinstance(item, str) else dumps(item)
    # Each line of a multi-line item is its own data: field; a blank line ends the event.
    return ("".join(f"data: {line}\n" for line in text.split("\n")) + "\n").encode()


def chunk(item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return (dumps(item) + "\n").encode()


def chunked_content_type(first: Any) -> str:
    if isinstance(first, str):
        return "text/plain; charset=utf-8"
    if isinstance(first, (bytes, bytearray)):
        return "application/octet-stream"
    return "application/x-ndjson"


async def stream(request: web.Request, result: Any, run: RunInThread, headers: dict[str, str]) -> web.StreamResponse:
    items = iterate(result, run)
    sse = wants_sse(request)
    try:
        first = await anext(items)
    except StopAsyncIteration:
        first = _DONE
    response = web.StreamResponse(headers=headers)
    encode = sse_event if sse else chunk
    if sse:
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
    elif wants_ndjson(request) and not isinstance(first, (bytes, bytearray)):
        response.headers["Content-Type"] = "application/x-ndjson"
        encode = json_line
    else:
        response.headers["Content-Type"] = chunked_content_type(first)
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        if first is not _DONE:
            await response.write(encode(first))
            async for item in items:
                await response.write(encode(item))
    except Exception as exc:
        # Headers are gone already: an SSE client gets an error event; a chunked
        # body is cut off without its final chunk, so the client sees it fail.
        if sse:
            await response.write(b"event: error\n" + sse_event({"error": f"{type(exc).__name__}: {exc}"}))
            await response.write_eof()
        raise StreamFailed(exc) from exc
    await response.write_eof()
    return response


class StreamFailed(Exception):
    """The generator raised after the response started; the status is already sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
