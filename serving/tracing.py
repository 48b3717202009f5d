"""OpenTelemetry traces of one replica (stack.yaml's `tracing`), exported over OTLP/HTTP.

A request's span continues the W3C `traceparent` it came with (the gateway's,
a client's, or a calling API's) and keeps that trace's sampling decision;
without one, this replica samples at `sample_rate`. Below it: `queue` (the
wait for a predictor thread or a batch), `predict`, `post_predict`, and for
a batched API one `batch` span per batch, linked to the span of each request
in it. The request's span is the current context while `predict` runs, so
the `apis` handle's calls (serving.calls) carry it and the callee's spans
join the trace. Spans leave in batches from a background thread: the request
never waits on the collector.

Nothing here runs, nor is OpenTelemetry imported, unless tracing is on: with
it off the predict path tests one attribute for None. A request that is not
sampled (its `traceparent` says so, or this replica's roll at `sample_rate`
for one without) touches no OpenTelemetry either: its decision is one context
variable, and its calls pass an unsampled `traceparent` on so their callees
record nothing of it.
"""

from __future__ import annotations

import contextvars
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from serving.config import ServingConfig, TracingConfig

INSTALL = "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"
SCOPE = "stack.serving"
RunInPool = Callable[..., Awaitable[Any]]  # serving.pool.PredictPool.run
# W3C trace context: version-traceid-parentid-flags; bit 0 of the flags is "sampled".
TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-([0-9a-f]{2})")
# The traceparent an unsampled request passes on to its calls ("": a new one, it started no trace);
# None while serving a sampled request.
_UNSAMPLED: contextvars.ContextVar[str | None] = contextvars.ContextVar("stack_unsampled", default=None)


@dataclass
class RequestSpan:
    span: Any  # opentelemetry.trace.Span; None for a request not sampled
    token: object  # the context token that made it current (the unsampled marker's, without a span)


def sampled_flag(traceparent: str) -> bool | None:
    """The sampled bit of a W3C traceparent; None when it is not one (then it is ignored)."""
    found = TRACEPARENT.fullmatch(traceparent.strip().lower())
    return None if found is None else bool(int(found.group(1), 16) & 1)


class Tracer:
    """The spans of one replica process."""

    def __init__(self, config: TracingConfig, api: str, replica: str | None) -> None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise RuntimeError(f"tracing is on but OpenTelemetry is missing ({exc.name}): {INSTALL}") from None
        attributes = {
            "service.name": f"{config.project}-{api}" if config.project else api,
            "service.namespace": config.project,
            "service.version": config.version,
            "stack.project": config.project,
            "stack.api": api,
            "stack.version": config.version,
            "stack.replica": replica or "",
            "service.instance.id": replica or "",
        }
        # The root decision is taken before OpenTelemetry sees the request (start_request): a span is
        # only made for a sampled one, whose parent, if any, is sampled.
        self._provider = TracerProvider(
            resource=Resource.create({k: v for k, v in attributes.items() if v}),
            sampler=ParentBased(ALWAYS_ON),
        )
        self._rate = config.sample_rate
        # Short delay: a span is at the collector within a second, and a drain flushes the rest.
        self._provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint, timeout=5), schedule_delay_millis=500)
        )
        self._tracer = self._provider.get_tracer(SCOPE)
        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()
        self._api = api
        self._error = trace.Status(trace.StatusCode.ERROR)

    # -- a request -------------------------------------------------------------------

    def start_request(self, method: str, path: str, headers: Mapping[str, str], request_id: str) -> RequestSpan:
        """The request's span, or, when it is not sampled, only the marker that says so (no span at all:
        sampling at 0 costs a header check, not a span per request)."""
        header = headers.get("traceparent")
        sampled = sampled_flag(header) if header is not None else None
        if sampled is None:  # no (valid) traceparent: this replica starts the trace, or not
            if not (self._rate >= 1 or random.random() < self._rate):
                return RequestSpan(None, _UNSAMPLED.set(""))  # its traceparent is made if it calls
        elif not sampled:
            return RequestSpan(None, _UNSAMPLED.set(header))
        parent = self._propagator.extract(headers) if sampled else None
        span = self._tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "stack.request_id": request_id,
                "stack.api": self._api,
            },
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return RequestSpan(span, token)

    def finish_request(self, traced: RequestSpan, status: int, error: BaseException | None = None) -> None:
        span = traced.span
        if span is None:
            _UNSAMPLED.reset(traced.token)  # type: ignore[arg-type]
            return
        span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.record_exception(error)
        if status >= 500 or error is not None:
            span.set_status(self._error)
        span.end()
        self._context.detach(traced.token)

    @staticmethod
    def sampled() -> bool:
        """Whether the request being served is recorded (its queue, predict and post_predict spans)."""
        return _UNSAMPLED.get() is None

    def current(self) -> Any:
        """The current span's context (a batch links to it)."""
        return self._trace.get_current_span().get_span_context()

    def phase(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        error: BaseException | None = None,
        parent: Any = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Any:
        """A finished part of the request (`queue`, `predict`, `post_predict`) as a child of the current
        span (or of `parent`, a span context); returns the span."""
        context = self._trace.set_span_in_context(self._trace.NonRecordingSpan(parent)) if parent else None
        span = self._tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)
        if error is not None:
            span.record_exception(error)
            span.set_status(self._error)
        span.end(end_time=end_ns)
        return span

    def batch(self, requests: Iterable[Any], start_ns: int, end_ns: int, error: BaseException | None) -> Any:
        """One span for a batch, linked to the span of each request in it (a root of its own trace:
        it belongs to all of them at once). Returns its context, the parent of the batch's predict."""
        from opentelemetry.trace import Link

        links = [Link(ctx) for ctx in requests if ctx is not None and ctx.is_valid]
        span = self._tracer.start_span(
            "batch",
            context=self._context.Context(),
            start_time=start_ns,
            links=links,
            attributes={"stack.batch.size": len(links), "stack.api": self._api},
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(self._error)
        span.end(end_time=end_ns)
        return span.get_span_context()

    # -- calls and shutdown -------------------------------------------------------------

    def start_call(self, callee: str, headers: Mapping[str, str] | None) -> tuple[Any, dict[str, str]]:
        """A `call CALLEE` span (a client span below the current one) and the call's headers with its
        `traceparent`: the callee's request span is its child (serving.calls). Serving a request not
        sampled: no span, and the unsampled traceparent passed on."""
        unsampled = _UNSAMPLED.get()
        if unsampled is not None:
            unsampled = unsampled or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
            return None, {"traceparent": unsampled, **(headers or {})}
        span = self._tracer.start_span(
            f"call {callee}", kind=self._trace.SpanKind.CLIENT, attributes={"stack.callee": callee}
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return span, {**carrier, **(headers or {})}

    def end_call(self, span: Any, error: BaseException | None) -> None:
        if span is None:
            return
        if error is not None:
            status = getattr(error, "status", None)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            span.record_exception(error)
            span.set_status(self._error)
        span.end()

    def shutdown(self) -> None:
        """Send what is buffered (at most a few seconds: the collector may be gone)."""
        self._provider.force_flush(3000)
        self._provider.shutdown()


# The replica's tracer, or None when tracing is off (serving.calls reads it for its headers).
ACTIVE: Tracer | None = None


def start(config: ServingConfig, replica: str | None) -> Tracer | None:
    """The process's tracer for `config`, or None when tracing is off."""
    global ACTIVE
    if config.tracing is None:
        return None
    if ACTIVE is None:
        ACTIVE = Tracer(config.tracing, config.api, replica)
    return ACTIVE


def now_ns() -> int:
    return time.time_ns()


# -- the predict path's parts, as spans ------------------------------------------------


async def traced_async(tracer: Tracer, work: Awaitable[Any]) -> Any:
    """An async predict, as a `predict` span."""
    started, error = now_ns(), None
    try:
        return await work
    except BaseException as exc:
        error = exc
        raise
    finally:
        tracer.phase("predict", started, now_ns(), error)


async def traced_thread(tracer: Tracer, run: RunInPool, work: Callable[[], Any], is_gone: Any = None) -> Any:
    """`work` in a predictor thread, as a `queue` span (waiting for the thread) and a `predict` span."""
    times = [now_ns()]

    def timed() -> Any:
        times.append(now_ns())
        try:
            return work()
        finally:
            times.append(now_ns())

    error: BaseException | None = None
    try:
        return await run(timed, is_gone)
    except BaseException as exc:
        error = exc
        raise
    finally:
        tracer.phase("queue", times[0], times[1] if len(times) > 1 else now_ns())
        if len(times) > 2:
            tracer.phase("predict", times[1], times[2], error)


async def traced_batch(
    tracer: Tracer, run: RunInPool, call: Callable[[], Any], is_async: bool, requests: list[tuple[Any, int]]
) -> Any:
    """A batch's predict: one `batch` span linked to each request's span, its `predict` below it, and
    each request's wait for the batch as that request's `queue` span. `requests`: (span context, the
    time it was queued) of each."""
    started, error = now_ns(), None
    try:
        return await call() if is_async else await run(call)
    except BaseException as exc:
        error = exc
        raise
    finally:
        ended = now_ns()
        batch = tracer.batch([ctx for ctx, _ in requests], started, ended, error)
        for ctx, queued in requests:
            tracer.phase("queue", queued, started, parent=ctx)
        tracer.phase("predict", started, ended, error, parent=batch, attributes={"stack.batch.size": len(requests)})
