"""The gateway's routes as data: Traefik's dynamic configuration, built as dicts.

Every target's Traefik reads its routes from a file (the file provider) that
this module renders: the local supervisor and the Compose controller rewrite it
whenever a replica joins or leaves. No gateway needs the Docker socket.

Through the gateway an API exposes only what its clients need: the replica's
own `/metrics`, `/healthz` and `/readyz` (in any spelling that reaches the same
handler: `//metrics`, `/metrics/`) answer 404 there, and are reachable only on
the internal network, where Prometheus and the health checks use them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serving.keys import LEASE_HEADER

ENTRYPOINT = "web"
# The stack's own checks through the gateway come in here (127.0.0.1 only, plain HTTP): with TLS and
# client certificates on `web`, they could not; every router listens on both.
PROBE_ENTRYPOINT = "probe"
ENTRYPOINTS = (ENTRYPOINT, PROBE_ENTRYPOINT)
ROUTES_FILE = "routes.yml"
UPSTREAMS_FILE = "upstreams.json"  # pipelines: where the replicas' calls go (serving.calls), beside no key
INTERNAL_PATHS = ("metrics", "healthz", "readyz")
ACTIVATE = "/__stack/activate"  # the activator's path prefix (stack.control.gateway_errors)
JOBS = "/__stack/jobs"  # a BatchAPI's endpoint at the controller (stack.control.batch.jobs)
# Sent with our own checks through the gateway: the activator answers them without waking an API
# scaled to zero (a `stack status` must not count as the request that wakes it).
PROBE_HEADER = "X-Stack-Probe"
TOO_LARGE = "/__stack/too-large"  # the errors service's 413 for a declared body over max_body_size
# Named keys (gateway.keys): every router asks the controller first (Traefik's forwardAuth), AUTH/<router>;
# the replica that answers releases the request's lease (stack.control.tenants).
AUTH = "/__stack/auth"
ERRORS = "stack-errors"  # the service answering the gateway's own errors as JSON (stack.control.gateway_errors)
# A killed replica costs at most its in-flight requests: a request that could not reach
# a replica (no byte sent) goes to another one; the dial gives up after `dialTimeout`.
RETRY = {"attempts": 3, "initialInterval": "100ms"}


@dataclass(frozen=True)
class Route:
    router: str  # Traefik's name for the API's router, service and middlewares
    endpoint: str  # /iris
    servers: tuple[str, ...] = ()  # replica URLs that take requests now
    # Scaled to zero (min_replicas 0): with no server, requests go to the activator, which wakes a
    # replica for this API and holds them until it is ready.
    activate: str | None = None
    strategy: str = "p2c"  # how Traefik picks a replica (networking.load_balancer): p2c, wrr, leasttime
    # predictor.max_body_size: a request declaring a longer body is answered 413 by the gateway at once
    # (a replica's own answer would wait on Traefik until the client sent more or timed out).
    max_body: int | None = None
    jobs: str | None = None  # a BatchAPI: its requests (job submissions) go to the controller, never a replica
    api: str = ""  # the API's name in stack.yaml (its key in the upstreams file)
    # networking.affinity: ("query", "model") or ("header", "X-Model"), and each value's servers (a subset of
    # `servers`, stack.control.affinity): a router per value sends its requests there.
    affinity: tuple[str, str] | None = None
    pins: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Split:
    """A splitter: one endpoint, weighted across APIs' services, optionally mirrored."""

    router: str
    endpoint: str
    weights: tuple[tuple[str, int], ...]  # (an API's router/service name, weight)
    mirror: tuple[str, int] | None = None  # (an API's service, percent of requests copied)
    sticky_cookie: str | None = None  # the cookie that keeps a client on one API


def member_service(split_router: str, service: str) -> str:
    """The name of an API's service as a member of a splitter."""
    return f"{split_router}--{service}"


def empty_url(route: Route, errors_url: str) -> str:
    """Where an API's service points while it has no replica (a BatchAPI's, always)."""
    if route.jobs:
        return f"{errors_url}{JOBS}/{route.jobs}"
    return f"{errors_url}{ACTIVATE}/{route.activate}" if route.activate else errors_url


def upstreams(routes: list[Route], errors_url: str) -> str:
    """The upstreams file of pipelines (serving.calls): each API's ready replicas, or its activator while
    it is at zero, and the gateway's strategy, so a caller picks a replica as the gateway would."""
    apis = {
        route.api: {
            "servers": list(route.servers),
            "activators": [empty_url(route, errors_url)] if route.activate else [],
            "strategy": route.strategy,
        }
        for route in routes
        if route.api and not route.jobs
    }
    return json.dumps({"apis": apis}, sort_keys=True, indent=1) + "\n"


def router_rule(endpoint: str) -> str:
    """/iris and /iris/..., not /irisx (a bare PathPrefix would match it); never the replica's internal paths."""
    prefix = "" if endpoint == "/" else endpoint
    matches = f"Path(`{endpoint}`) || PathPrefix(`{endpoint}/`)" if prefix else "PathPrefix(`/`)"
    internal = f"^{re.escape(prefix)}/+({'|'.join(INTERNAL_PATHS)})/*$"
    return f"({matches}) && !PathRegexp(`{internal}`)"


def over_regex(limit: int) -> str:
    """A regular expression matching the decimal integers above `limit` (leading zeros allowed)."""
    digits = str(limit)
    width = len(digits)
    longer = f"[1-9][0-9]{{{width},}}"
    same = []
    for i, digit in enumerate(digits):
        if digit == "9":
            continue
        rest = width - i - 1
        higher = "9" if digit == "8" else f"[{int(digit) + 1}-9]"
        same.append(digits[:i] + higher + (f"[0-9]{{{rest}}}" if rest else ""))
    return f"^0*({'|'.join([longer, *same])})$"


def too_large_rule(endpoint: str, limit: int) -> str:
    """The API's requests that declare a body over `limit` bytes (Content-Length)."""
    return f"({router_rule(endpoint)}) && HeaderRegexp(`Content-Length`, `{over_regex(limit)}`)"


def _too_large(
    name: str, endpoint: str, limit: int, routers: dict[str, Any], middlewares: dict[str, Any], json: bool
) -> None:
    """A router that answers requests declaring a body over `limit` with a 413 without reading it.

    Traefik's `buffering` middleware rejects on the declared length at once; it only sees these
    requests (it also buffers responses, which would hold back a streamed answer). Its text 413
    becomes the replica's JSON one through the errors service. The priority puts it just above its
    API's router (Traefik's default priority is the rule's length) and below any longer endpoint's.
    """
    routers[f"{name}-too-large"] = {
        "entryPoints": list(ENTRYPOINTS),
        "rule": too_large_rule(endpoint, limit),
        "priority": len(router_rule(endpoint)) + 2,  # above its affinity routers too
        "service": name,
        "middlewares": ([f"{name}-too-large-json"] if json else []) + [f"{name}-body-limit"],
    }
    middlewares[f"{name}-body-limit"] = {"buffering": {"maxRequestBodyBytes": limit}}
    if json:
        middlewares[f"{name}-too-large-json"] = {
            "errors": {"status": ["413"], "service": ERRORS, "query": f"{TOO_LARGE}/{limit}"}
        }


def pin_name(router: str, value: str) -> str:
    """The router and service of one affinity value (a digest: values may hold any routable character)."""
    return f"{router}-affinity-{hashlib.blake2b(value.encode(), digest_size=6).hexdigest()}"


def affinity_rule(endpoint: str, affinity: tuple[str, str], value: str) -> str:
    kind, key = affinity
    matcher = f"Query(`{key}`, `{value}`)" if kind == "query" else f"Header(`{key}`, `{value}`)"
    return f"({router_rule(endpoint)}) && {matcher}"


def _pins(route: Route, middlewares: list[str], routers: dict[str, Any], services: dict[str, Any]) -> None:
    """One router per affinity value, just above the API's own (and below its too-large router and any
    longer endpoint's), over the value's servers."""
    assert route.affinity is not None
    for value, servers in route.pins:
        if "`" in value or not servers:
            continue
        name = pin_name(route.router, value)
        routers[name] = {
            "entryPoints": list(ENTRYPOINTS),
            "rule": affinity_rule(route.endpoint, route.affinity, value),
            "priority": len(router_rule(route.endpoint)) + 1,
            "service": name,
            "middlewares": list(middlewares),
        }
        services[name] = {"loadBalancer": {"servers": [{"url": url} for url in servers], "strategy": route.strategy}}


def auth_middleware(router: str, controller: str) -> dict[str, Any]:
    """`<router>-auth`: Traefik's forwardAuth asking the controller at `controller` (named keys); the lease its
    answer carries goes on with the request."""
    return {
        f"{router}-auth": {
            "forwardAuth": {
                "address": f"{controller}{AUTH}/{router}",
                "authResponseHeaders": [LEASE_HEADER],
                "trustForwardHeader": False,  # the client's X-Forwarded-* are not the controller's business
                "maxResponseBodySize": 4096,  # the controller's answers are a line of JSON
            }
        }
    }


def _auth(name: str, errors_url: str, middlewares: dict[str, Any]) -> list[str]:
    """The router's forwardAuth middleware (named keys): the controller decides, the lease goes on."""
    middlewares.update(auth_middleware(name, errors_url))
    return [f"{name}-auth"]


def dynamic_config(
    routes: list[Route], errors_url: str | None = None, splits: tuple[Split, ...] = (), auth: bool = False
) -> dict[str, Any]:
    """Traefik's dynamic configuration for these routes (file provider).

    With `errors_url` (stack.control.gateway_errors), every answer the gateway makes itself is JSON:
    a path no API serves, an API with no ready replica, a replica that broke the connection (502).
    With `auth` (named keys, and `errors_url`), every API's and splitter's router asks the controller first.
    """
    routers: dict[str, Any] = {}
    middlewares: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for route in routes:
        name = route.router
        routers[name] = {
            "entryPoints": list(ENTRYPOINTS),
            "rule": router_rule(route.endpoint),
            "service": name,
            "middlewares": (_auth(name, errors_url, middlewares) if auth and errors_url and not route.jobs else [])
            + ([ERRORS] if errors_url else [])
            + [f"{name}-strip", f"{name}-retry"],
        }
        middlewares[f"{name}-strip"] = {"stripPrefix": {"prefixes": [route.endpoint]}}
        middlewares[f"{name}-retry"] = {"retry": dict(RETRY)}
        if route.servers or not errors_url:
            servers: list[dict[str, Any]] = [{"url": url} for url in route.servers]
        else:
            # No replica: the error service, or for an API scaled to zero the activator; the path is
            # on the service (preservePath), so requests reaching it through a splitter wake it too.
            servers = [{"url": empty_url(route, errors_url), "preservePath": True}]
        services[name] = {"loadBalancer": {"servers": servers, "strategy": route.strategy}}
        if route.affinity is not None and route.servers:
            _pins(route, routers[name]["middlewares"], routers, services)
        if route.max_body is not None:
            _too_large(name, route.endpoint, route.max_body, routers, middlewares, json=errors_url is not None)
    limits = {route.router: route.max_body for route in routes}
    for split in splits:
        # Each API gets its own copy of its service under the splitter, so the gateway's per-service
        # metrics count what the splitter sent it apart from the API's own endpoint's requests.
        for svc, _ in split.weights:
            services[member_service(split.router, svc)] = copy.deepcopy(
                services.get(svc) or {"loadBalancer": {"servers": []}}
            )
        first = _auth(split.router, errors_url, middlewares) if auth and errors_url else []
        _add_split(split, routers, middlewares, services, first + ([ERRORS] if errors_url else []), provider="")
        members = [limits.get(svc) for svc, _ in split.weights]
        if members and None not in members:  # over every member's limit: none of them would take it
            limit = max(m for m in members if m is not None)
            _too_large(split.router, split.endpoint, limit, routers, middlewares, json=errors_url is not None)
    if errors_url:
        services[ERRORS] = {"loadBalancer": {"servers": [{"url": errors_url}]}}
        # Only what a replica never sends: Traefik's own 502 (a replica that broke the connection). A replica's
        # own answers pass untouched: its 503 with Retry-After, its 504 JSON with the request id (a timeout, a
        # stuck replica answering what it held). Traefik itself never answers 504 here: no response timeout.
        middlewares[ERRORS] = {
            "errors": {"status": ["502"], "service": ERRORS, "query": "/__stack/gateway-error/{status}"}
        }
        if not any(route.endpoint == "/" for route in routes) and not any(x.endpoint == "/" for x in splits):
            middlewares[f"{ERRORS}-no-route"] = {"addPrefix": {"prefix": "/__stack/no-route"}}
            routers[f"{ERRORS}-no-route"] = {
                "entryPoints": list(ENTRYPOINTS),
                "rule": "PathPrefix(`/`)",
                "priority": 1,  # the last resort: any API's router wins
                "service": ERRORS,
                "middlewares": [f"{ERRORS}-no-route"],
            }
    if not routers:
        return {}
    return {"http": {"routers": routers, "middlewares": middlewares, "services": services}}


def _add_split(
    split: Split,
    routers: dict[str, Any],
    middlewares: dict[str, Any],
    services: dict[str, Any],
    first: list[str],
    provider: str,
) -> None:
    """A splitter's router, weighted (and mirroring) service and middlewares; its members are
    `member_service` names, here or (`provider`: "@nomad") in another provider."""
    name = split.router
    members = [{"name": member_service(name, svc) + provider, "weight": weight} for svc, weight in split.weights]
    weighted: dict[str, Any] = {"services": members}
    if split.sticky_cookie:
        weighted["sticky"] = {"cookie": {"name": split.sticky_cookie, "httpOnly": True}}
    services[name] = {"weighted": weighted}
    target = name
    if split.mirror is not None:
        target = f"{name}-mirrored"  # copies go to the mirror; clients only see the primary's answers
        services[target] = {
            "mirroring": {
                "service": name,
                "mirrors": [{"name": split.mirror[0] + provider, "percent": split.mirror[1]}],
            }
        }
    routers[name] = {
        "entryPoints": list(ENTRYPOINTS),
        "rule": router_rule(split.endpoint),
        "service": target,
        "middlewares": [*first, f"{name}-strip", f"{name}-retry"],
    }
    middlewares[f"{name}-strip"] = {"stripPrefix": {"prefixes": [split.endpoint]}}
    middlewares[f"{name}-retry"] = {"retry": dict(RETRY)}


def provider_splits(splits: tuple[Split, ...], provider: str, auth: bool = False) -> dict[str, Any]:
    """Splitters over services another provider defines (Nomad's catalogue: `provider` is "nomad").

    Each API's job declares a service per splitter it is in (`member_service`), so the gateway
    counts a splitter's requests per API apart from the API's own endpoint.
    """
    routers: dict[str, Any] = {}
    middlewares: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for split in splits:
        first = [f"{split.router}-auth"] if auth else []  # defined beside (the gateway's auth.yml)
        _add_split(split, routers, middlewares, services, first, provider=f"@{provider}")
    return {"http": {"routers": routers, "middlewares": middlewares, "services": services}} if routers else {}


def render(
    routes: list[Route],
    header: str = "",
    errors_url: str | None = None,
    splits: tuple[Split, ...] = (),
    auth: bool = False,
) -> str:
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    config = dynamic_config(routes, errors_url, splits, auth)
    return comment + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def write(routes_dir: Path, text: str, mode: int = 0o644, name: str = ROUTES_FILE) -> bool:
    """Replace the routes file (or another file `name` of the directory) at once; False when it already
    says this (Traefik is not woken)."""
    target = routes_dir / name
    try:
        if target.read_text() == text:
            return False
    except OSError:
        pass
    routes_dir.mkdir(parents=True, exist_ok=True)
    # Written beside the watched directory, then renamed into it: Traefik only ever
    # sees one complete file, never half of one or a second copy of the routes.
    temp = routes_dir.parent / f".{routes_dir.name}-{name}.{os.getpid()}.tmp"
    temp.touch(mode=0o600)  # the key of tls.yml is never readable by others, not even for a moment
    temp.write_text(text)
    temp.chmod(mode)
    os.replace(temp, target)
    return True


def read_servers(routes_dir: Path) -> dict[str, list[str]] | None:
    """The servers each router's service has in the routes file; None when the file is missing or not ours."""
    try:
        data = yaml.safe_load((routes_dir / ROUTES_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if data == {} or data is None:
        return {}
    try:
        services = data["http"]["services"]
        return {
            name: [server["url"] for server in service["loadBalancer"]["servers"]]
            for name, service in services.items()
            if name != ERRORS and "loadBalancer" in service
        }
    except (KeyError, TypeError):
        return None


def provider_affinity(routes: list[Route], provider: str) -> dict[str, Any]:
    """Affinity routers for APIs whose own router another provider defines (Nomad's catalogue: `provider` is
    "nomad"): each value's router uses that router's middlewares, over the value's allocations."""
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for route in routes:
        if route.affinity is not None and route.servers:
            own = [f"{route.router}-strip@{provider}", f"{route.router}-retry@{provider}"]
            _pins(route, own, routers, services)
    return {"http": {"routers": routers, "services": services}} if routers else {}


def activator_fallback(routes: list[Route], activator_service: str) -> dict[str, Any]:
    """Last-resort routers (priority 1) sending APIs scaled to zero to the activator.

    For a gateway whose routes come from elsewhere (Nomad's service catalogue): while an API has
    instances its own router wins; at zero only this one matches.
    """
    routers: dict[str, Any] = {}
    middlewares: dict[str, Any] = {}
    for route in routes:
        name = f"{route.router}-zero"
        middlewares[f"{name}-strip"] = {"stripPrefix": {"prefixes": [route.endpoint]}}
        prefix = f"{JOBS}/{route.jobs}" if route.jobs else f"{ACTIVATE}/{route.activate}"  # a BatchAPI's, always
        middlewares[f"{name}-activate"] = {"addPrefix": {"prefix": prefix}}
        routers[name] = {
            "entryPoints": list(ENTRYPOINTS),
            "rule": router_rule(route.endpoint),
            "priority": 1,
            "service": activator_service,
            "middlewares": [f"{name}-strip", f"{name}-activate"],
        }
    return {"http": {"routers": routers, "middlewares": middlewares}} if routers else {}


def api_routes(spec: Any) -> tuple[Route, ...]:
    """Each API's route at the gateway as stack.yaml gives it (`spec`: a stack.spec.Spec), before any replica
    joins it: an API scaled to zero routes to the activator, a BatchAPI's to the controller's jobs."""
    routes = tuple(
        Route(
            f"{spec.project}-{api.name}",
            api.endpoint,
            activate=api.name if api.autoscaling.min_replicas == 0 else None,
            strategy=api.networking.load_balancer,
            max_body=api.predictor.max_body_size,
            api=api.name,
        )
        for api in spec.apis
    )
    return routes + tuple(Route(f"{spec.project}-{a.name}", a.endpoint, jobs=a.name) for a in spec.batch_apis)
