"""What every target's Traefik is started with beyond its routes: its read timeout, its TLS arguments for
`gateway.tls`, its tracing arguments for `tracing`."""

from __future__ import annotations

from stack.spec import Spec
from stack.spec.units import format_duration
from stack.tls import AcmePaths, traefik_args


def gateway_read_timeout(spec: Spec) -> str:
    """Traefik's readTimeout: a second past the longest `body_timeout` of the stack's APIs.

    Traefik holds a replica's early answer (a 408 for a stalled body) until its read of the client's
    body returns, so the gateway must give up reading just after the replica did, not a minute later.
    """
    longest = max((api.predictor.body_timeout for api in spec.apis), default=30.0)
    return format_duration(longest + 1)


def traefik_tls_args(spec: Spec, acme_storage: str, acme_ca: str | None) -> list[str]:
    """Traefik's TLS arguments for a target that keeps ACME's storage at `acme_storage` and sees
    tls.acme.ca_file at `acme_ca`."""
    tls = spec.gateway.tls
    if tls is None:
        return []
    acme = AcmePaths(acme_storage, acme_ca if tls.acme and tls.acme.ca_file else None)
    return traefik_args(tls, spec.gateway.http_port, acme)


def traefik_tracing_args(spec: Spec, traces_url: str | None = None) -> list[str]:
    """Traefik's own OpenTelemetry tracing from stack.yaml's `tracing` ([] without it): it starts a trace
    at `sample_rate`, or continues a client's `traceparent` with its decision, and passes the context on
    to the replica. `traces_url`: the collector as the gateway reaches it (default: stack.yaml's)."""
    tracing = spec.tracing
    if tracing is None:
        return []
    return [
        "--tracing=true",
        f"--tracing.serviceName={spec.project}-gateway",
        f"--tracing.sampleRate={tracing.sample_rate:g}",
        f"--tracing.resourceAttributes.stack_project={spec.project}",
        f"--tracing.otlp.http.endpoint={traces_url or tracing.traces_url}",
    ]
