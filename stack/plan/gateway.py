"""What each target's Traefik is started with beyond its routes: its read timeout, and for `gateway.tls`
its TLS arguments and (Compose) the mounts of the certificate files."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from stack.spec import LoadedSpec, Spec
from stack.spec.units import format_duration
from stack.tls import AcmePaths, traefik_args

COMPOSE_ACME_CA = "/etc/stack/acme-ca.pem"  # tls.acme.ca_file in the Compose gateway
DOCKER_HOST_NAME = "host.docker.internal"  # the Docker host, from a container (extra_hosts: host-gateway)


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


def tls_mounts(loaded: LoadedSpec, out_dir: Path) -> tuple[list[str], Callable[[Path], str]]:
    """Each directory of gateway.tls's files, read-only into the controller (a directory, not the file: a
    renewal that replaces the file is seen), and where a file is seen there."""
    tls = loaded.spec.gateway.tls
    names = [n for n in (tls.cert_file, tls.key_file, tls.client_ca_file) if n] if tls else []
    dirs = sorted({(loaded.root / name).resolve().parent for name in names})
    mounts = [f"{os.path.relpath(d, out_dir)}:/run/secrets/tls/{i}:ro" for i, d in enumerate(dirs)]
    return mounts, lambda path: f"/run/secrets/tls/{dirs.index(path.parent)}/{path.name}"


def acme_ca(loaded: LoadedSpec, out_dir: Path) -> str | None:
    tls = loaded.spec.gateway.tls
    if tls is None or tls.acme is None or not tls.acme.ca_file:
        return None
    return os.path.relpath((loaded.root / tls.acme.ca_file).resolve(), out_dir)


def compose_tls_args(spec: Spec) -> list[str]:
    return traefik_tls_args(spec, "/acme/acme.json", COMPOSE_ACME_CA)


def tls_variable(project: str) -> str:
    """The Nomad Variable of the gateway's TLS: under the Traefik job's group, which only that job reads."""
    return f"nomad/jobs/{project}-traefik/traefik"


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


def from_container(url: str) -> str:
    """`url` as a container reaches it: a collector on the Docker host's loopback is at host.docker.internal
    (the Compose services map it to the host's gateway address)."""
    return re.sub(r"^(https?://)(127\.0\.0\.1|localhost|\[::1\])(?=[:/]|$)", rf"\g<1>{DOCKER_HOST_NAME}", url)
