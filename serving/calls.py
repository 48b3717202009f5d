"""Pipelines: a predictor calls the other APIs of its stack through the `apis` handle.

    class Predictor:
        def __init__(self, config, apis):
            self.score = apis["score"]           # an API named in this API's `calls`

        def predict(self, payload):
            vector = self.score.predict(payload)  # sync code; `await ....apredict(...)` from async code

Calls go replica to replica, never through the public port: the controller keeps a file
(`upstreams_file`) listing each callee's ready replicas, or the activator while it is scaled to
zero, and the caller picks one with the strategy the gateway uses (networking.load_balancer).
A call carries the caller's request id (`X-Request-ID`) and what is left of its deadline
(`X-Request-Timeout`, seconds): the callee stops at that deadline, and when the caller's own
client goes away the call is dropped (the callee sees its client leave). A replica that cannot
be reached, or answers 503, is retried on another within the gateway's budget (three tries,
100 ms apart and doubling); then the call raises `CallError` 503 naming the callee.

The answer is decoded by content type (JSON -> value, text -> str, anything else -> bytes); a
streamed answer (SSE, NDJSON, chunked) is an iterator (an async iterator from `apredict`). A 4xx
or 5xx raises `CallError`, an `HTTPError` with the callee's status, message and name.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from serving import tracing
from serving.codec import dumps
from serving.errors import HTTPError
from serving.pool import ClientGone

TIMEOUT_HEADER = "X-Request-Timeout"  # seconds the caller still waits for this answer
# The named key of the client a call is made for. A callee believes it only on a call that did not come
# through the gateway (no X-Forwarded-For: Traefik always sets one), so a client cannot claim another key.
CALLER_HEADER = "X-Stack-Caller"
ATTEMPTS = 3  # as the gateway's retry middleware (stack.routes.RETRY)
FIRST_BACKOFF = 0.1
REREAD_EVERY = 0.25  # seconds between looks at the upstreams file's modification time
GONE_POLL = 0.05  # seconds between checks that the caller's own client is still there
CONNECT_TIMEOUT = 2.0  # as the gateway's dialTimeout
STREAM_TYPES = ("text/event-stream", "application/x-ndjson")
# A streamed answer as JSON lines (each item exact, str ones too: serving.streaming); others as they are.
ACCEPT = "application/x-ndjson, application/json;q=0.9, */*;q=0.8"


class CallError(HTTPError):
    """A call to another API failed: its status and message, and `callee`, the API's name."""

    def __init__(self, status: int, message: str, callee: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, f"{callee}: {message}", headers)
        self.callee = callee
        self.detail = message  # the callee's own message, without its name


class UndeclaredCall(KeyError):
    """`apis[name]` for an API not in this API's `calls`."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RequestContext:
    """The request being served, as calls made while serving it see it."""

    request_id: str
    deadline: float | None  # the event loop's time by which the caller's client must be answered
    gone: Callable[[], bool]  # the caller's client went away
    key_name: str = ""  # the named key (gateway.keys) the caller's client presented: the callee counts it there


CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("stack_request", default=None)


@dataclass(frozen=True)
class Upstream:
    servers: tuple[str, ...] = ()  # ready replicas (base URLs)
    activators: tuple[str, ...] = ()  # where a call wakes the API while it has no replica
    strategy: str = "p2c"


@dataclass
class _Server:
    in_flight: int = 0
    latency: float = 0.0  # EWMA of response times (leasttime)


class Upstreams:
    """The callees' replicas as the controller last wrote them; the file is re-read when it changes."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int] | None = None
        self._checked = -REREAD_EVERY
        self._apis: dict[str, Upstream] = {}

    def get(self, api: str, fresh: bool = False) -> Upstream:
        now = time.monotonic()
        if self.path is not None and (fresh or now - self._checked >= REREAD_EVERY):
            self._checked = now
            self._reload(self.path)
        return self._apis.get(api, Upstream())

    def _reload(self, path: Path) -> None:
        try:
            stat = path.stat()
        except OSError:
            self._apis, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(path.read_text())
            apis = {
                name: Upstream(
                    tuple(entry.get("servers") or ()),
                    tuple(entry.get("activators") or ()),
                    entry.get("strategy") or "p2c",
                )
                for name, entry in (data.get("apis") or {}).items()
            }
        except (OSError, ValueError, AttributeError, TypeError):
            return  # half-written by hand or a wrong shape: keep what we had, look again later
        self._apis, self._stamp = apis, stamp


@dataclass
class _Balancer:
    servers: dict[str, _Server] = field(default_factory=dict)
    turn: int = 0

    def pick(self, candidates: list[str], strategy: str) -> str:
        if len(candidates) == 1:
            return candidates[0]
        state = self.servers
        if strategy == "wrr":
            self.turn += 1
            return candidates[self.turn % len(candidates)]
        if strategy == "leasttime":
            return min(candidates, key=lambda url: (state.setdefault(url, _Server()).latency, state[url].in_flight))
        first, second = random.sample(candidates, 2)  # p2c: the one of two with fewer calls in flight
        a, b = state.setdefault(first, _Server()), state.setdefault(second, _Server())
        return first if a.in_flight <= b.in_flight else second

    def server(self, url: str) -> _Server:
        return self.servers.setdefault(url, _Server())


class Apis(Mapping[str, "ApiHandle"]):
    """The APIs this API may call (its `calls`), by name: what `__init__(self, config, apis)` gets."""

    def __init__(
        self,
        caller: str,
        calls: list[str],
        upstreams: Upstreams,
        loop: asyncio.AbstractEventLoop,
        key: Callable[[], str | None] = lambda: None,
        record: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.caller = caller
        self.calls = list(calls)
        self.upstreams = upstreams
        self.loop = loop
        # The stack's API key now (keys change while a replica runs): a callee checks keys; the predictor
        # never handles one.
        self.key = key
        self.record = record  # (callee, code, seconds) per call, for predictor_calls_total
        self._session: aiohttp.ClientSession | None = None
        self._handles = {name: ApiHandle(name, self) for name in self.calls}
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = 0

    def __getitem__(self, name: str) -> ApiHandle:
        handle = self._handles.get(name)
        if handle is None:
            declared = ", ".join(self.calls) if self.calls else "none"
            raise UndeclaredCall(
                f"API {self.caller!r} may only call the APIs in its `calls` in stack.yaml ({declared}); "
                f"add {name!r} to apis[].calls to call it"
            )
        return handle

    def __contains__(self, name: object) -> bool:
        return name in self._handles

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    def new_request_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}{os.getpid():x}{self._counter:08x}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ApiHandle:
    """One callee: `predict` from sync code (a predictor thread), `apredict` from async code."""

    def __init__(self, name: str, apis: Apis) -> None:
        self.name = name
        self._apis = apis
        self._balancer = _Balancer()

    def __repr__(self) -> str:
        return f"<ApiHandle {self.name}>"

    def predict(
        self,
        payload: Any = None,
        query_params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        loop = self._apis.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(
                f"apis[{self.name!r}].predict() waits for the answer and would block the event loop; "
                f"from async code use `await apis[{self.name!r}].apredict(...)`"
            )
        context = CURRENT.get()
        tracer = tracing.ACTIVE
        span, headers = tracer.start_call(self.name, headers) if tracer is not None else (None, headers)
        try:
            future = asyncio.run_coroutine_threadsafe(self._call(payload, query_params, headers, context), loop)
            answer = future.result()
        except BaseException as exc:
            if tracer is not None:
                tracer.end_call(span, exc)
            raise
        if tracer is not None:
            tracer.end_call(span, None)
        if isinstance(answer, _Stream):
            return answer.sync_iter(loop)
        return answer

    async def apredict(
        self,
        payload: Any = None,
        query_params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        tracer = tracing.ACTIVE
        span, headers = tracer.start_call(self.name, headers) if tracer is not None else (None, headers)
        try:
            answer = await self._call(payload, query_params, headers, CURRENT.get())
        except BaseException as exc:
            if tracer is not None:
                tracer.end_call(span, exc)
            raise
        if tracer is not None:
            tracer.end_call(span, None)
        return answer.async_iter() if isinstance(answer, _Stream) else answer

    # -- one call -------------------------------------------------------------

    async def _call(
        self,
        payload: Any,
        query: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        context: RequestContext | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        code = "error"
        watch = _GoneWatch(context, loop) if context is not None else None
        try:
            answer, code = await self._exchange(payload, query, headers, context, loop)
            return answer
        except CallError as exc:
            code = str(exc.status)
            raise
        except asyncio.CancelledError:
            if watch is not None and watch.fired:
                code = "499"
                watch.uncancel()
                raise ClientGone() from None
            raise
        finally:
            if watch is not None:
                watch.stop()
            if self._apis.record is not None:
                self._apis.record(self.name, code, time.perf_counter() - started)

    async def _exchange(
        self,
        payload: Any,
        query: Mapping[str, str] | None,
        extra: Mapping[str, str] | None,
        context: RequestContext | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Any, str]:
        body, content_type = _encode(payload)
        request_id = context.request_id if context is not None else self._apis.new_request_id()
        headers = {"Content-Type": content_type, "X-Request-ID": request_id, "Accept": ACCEPT}
        key = self._apis.key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Its usage and priority are the caller's client's ("-": no named key; the key it carries says nothing).
        headers[CALLER_HEADER] = (context.key_name if context is not None else "") or "-"
        headers.update(extra or {})
        session = self._apis.session()
        tried: set[str] = set()
        backoff = FIRST_BACKOFF
        why = "it has no ready replica"
        for attempt in range(ATTEMPTS):
            remaining = _remaining(context, loop)
            if remaining is not None:
                if remaining <= 0:
                    raise CallError(504, "the caller's deadline passed before it answered", self.name)
                headers[TIMEOUT_HEADER] = f"{remaining:.3f}"
            upstream = self._apis.upstreams.get(self.name, fresh=attempt > 0)
            untried = [url for url in upstream.servers if url not in tried]
            if untried:
                url = self._balancer.pick(untried, upstream.strategy)
            elif upstream.activators:
                url = upstream.activators[0]  # holds the call until a replica is up, then forwards it
            else:
                if attempt < ATTEMPTS - 1:
                    await asyncio.sleep(backoff if remaining is None else min(backoff, remaining))
                    backoff *= 2
                continue
            server = self._balancer.server(url)
            server.in_flight += 1
            sent = time.perf_counter()
            try:
                response = await session.post(
                    url.rstrip("/") + "/",
                    data=body,
                    params=dict(query) if query else None,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=remaining, sock_connect=CONNECT_TIMEOUT),
                )
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                server.in_flight -= 1
                tried.add(url)
                why = f"its replica {url} could not be reached ({type(exc).__name__})"
                continue
            except TimeoutError:
                server.in_flight -= 1
                raise CallError(504, "no answer within the caller's deadline", self.name) from None
            except aiohttp.ClientError as exc:
                server.in_flight -= 1
                raise CallError(502, f"the call failed: {type(exc).__name__}: {exc}", self.name) from None
            if response.status == 503 and url in upstream.servers and attempt < ATTEMPTS - 1:
                more = [u for u in self._apis.upstreams.get(self.name).servers if u not in tried and u != url]
                if more:  # loading, draining or full: another replica may take it
                    server.in_flight -= 1
                    response.release()
                    tried.add(url)
                    continue
            try:
                return await self._answer(response, server, sent)
            except TimeoutError:
                raise CallError(504, "no answer within the caller's deadline", self.name) from None
        raise CallError(503, why, self.name, {"Retry-After": "1"})

    async def _answer(self, response: aiohttp.ClientResponse, server: _Server, sent: float) -> tuple[Any, str]:
        streamed = False
        try:
            if response.status >= 400:
                text = await response.text(errors="replace")
                raise CallError(response.status, _error_message(text), self.name, _retry_after(response))
            kind = response.content_type
            chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
            if kind in STREAM_TYPES or (chunked and response.content_length is None and not kind.endswith("json")):
                streamed = True
                return _Stream(response, kind, self, server), str(response.status)
            raw = await response.read()
            return _decode(raw, kind, response.charset), str(response.status)
        finally:
            if not streamed:
                server.in_flight -= 1
                server.latency += (time.perf_counter() - sent - server.latency) * 0.3
                response.release()


class _GoneWatch:
    """Cancels the call's task when the caller's own client went away (checked every GONE_POLL)."""

    def __init__(self, context: RequestContext, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.loop = loop
        self.task = asyncio.current_task()
        self.fired = False
        self.timer: asyncio.TimerHandle | None = loop.call_later(GONE_POLL, self._check)

    def _check(self) -> None:
        if self.context.gone():
            self.fired = True
            self.timer = None
            if self.task is not None:
                self.task.cancel()
            return
        self.timer = self.loop.call_later(GONE_POLL, self._check)

    def uncancel(self) -> None:
        if self.task is not None:
            self.task.uncancel()  # the cancel was ours: the task goes on to raise ClientGone

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Stream:
    """A streamed answer, read as it arrives: SSE events' data, NDJSON documents, or raw chunks."""

    def __init__(self, response: aiohttp.ClientResponse, kind: str, handle: ApiHandle, server: _Server) -> None:
        self.response = response
        self.kind = kind
        self.handle = handle
        self.server = server

    async def async_iter(self) -> AsyncIterator[Any]:
        try:
            if self.kind == "text/event-stream":
                async for item in self._events():
                    yield item
            elif self.kind == "application/x-ndjson":
                async for line in self.response.content:
                    if line.strip():
                        yield json.loads(line)
            else:
                text = self.kind.startswith("text/")
                async for chunk in self.response.content.iter_any():
                    yield chunk.decode(self.response.charset or "utf-8", "replace") if text else chunk
        finally:
            self.server.in_flight -= 1
            self.response.release()

    async def _events(self) -> AsyncIterator[Any]:
        data: list[str] = []
        event = "message"
        async for raw in self.response.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif not line and data:
                text = "\n".join(data)
                if event == "error":
                    raise CallError(502, f"the stream failed: {_error_message(text)}", self.handle.name)
                yield _maybe_json(text)
                data, event = [], "message"

    def sync_iter(self, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
        items = self.async_iter()

        async def step() -> Any:
            return await anext(items)

        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(step(), loop).result()
            except StopAsyncIteration:
                return


def _remaining(context: RequestContext | None, loop: asyncio.AbstractEventLoop) -> float | None:
    if context is None or context.deadline is None:
        return None
    return context.deadline - loop.time()


def _encode(payload: Any) -> tuple[bytes, str]:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode(), "text/plain; charset=utf-8"
    return dumps(payload).encode(), "application/json"


def _decode(raw: bytes, kind: str, charset: str | None) -> Any:
    if kind == "application/json" or kind.endswith("+json"):
        return json.loads(raw) if raw else None
    if kind.startswith("text/"):
        return raw.decode(charset or "utf-8", "replace")
    return raw


def _maybe_json(text: str) -> Any:
    """An SSE event's data: the JSON value the callee yielded, else its text."""
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip() or "no message"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):  # OpenAI's shape
            return str(error.get("message") or error)
        if error is not None:
            return str(error)
    return text.strip()


def _retry_after(response: aiohttp.ClientResponse) -> dict[str, str]:
    value = response.headers.get("Retry-After")
    return {"Retry-After": value} if value else {}
