"""How the CLI prints a `StackStatus` for people: the APIs' table, the splitters, the canaries, and
with one API its replicas, events and the autoscaler's decisions. (`--json` prints `to_dict()`.)"""

from __future__ import annotations

import time

import click

from stack.spec import Api, LoadedSpec
from stack.spec.units import format_memory
from stack.status import AffinityStatus, ApiPhase, ApiStatus, CanaryStatus, SplitterStatus, StackStatus


def _weights_from(splitter: SplitterStatus) -> str:
    if splitter.overridden:
        return "set by `stack split` until the next `stack up`"
    if splitter.canary is not None and splitter.canary.phase != "stopped":
        return f"canary {splitter.canary.api} ({splitter.canary.phase})"
    return "stack.yaml"


def _canary_text(splitter: str, canary: CanaryStatus, shown: int = 8) -> str:
    steps = " ".join(f"{p}%" for p in canary.steps)
    head = f"canary {canary.api} (splitter {splitter}): {canary.phase} at {canary.weight}% [steps {steps}]"
    if canary.phase == "progressing":
        left = max(canary.step_started + canary.interval - time.time(), 0.0)
        head += f", judged in {left:.0f}s"
    lines = [head]
    for d in canary.decisions[-shown:]:
        when = time.strftime("%H:%M:%S", time.localtime(d["at"]))
        repeat = f" (x{d['count']})" if d.get("count", 1) > 1 else ""
        lines.append(f"  {when}  {d['action']:<8} {d['weight']:>3}%  {d['reason']}{repeat}")
    return "\n".join(lines)


def _zero_since(api: ApiStatus) -> str:
    """For an API scaled to zero: since when, from the autoscaler's decision (or a `stack scale` by hand)."""
    if api.status != ApiPhase.SCALED_TO_ZERO or not api.autoscaler:
        return ""
    changes = [c for c in api.autoscaler.changes if c.desired == 0 and c.applied]
    if not changes:
        return ""
    at = changes[-1].at
    return f" (idle, since {time.strftime('%H:%M:%S', time.localtime(at))}, {_uptime(time.time() - at)} ago)"


def show_status(
    data: StackStatus, apis: list[ApiStatus], detail: bool, scheme: str = "http", batch: list[Api] | None = None
) -> None:
    from tabulate import tabulate

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    rows = []
    for a in apis:
        traffic = a.traffic
        rows.append(
            [
                a.name,
                a.status
                + _zero_since(a)
                + (f", at GPU capacity ({a.desired}/{a.gpu_slots} slots)" if a.at_gpu_capacity else "")
                + (" (files changed since the last `stack up`)" if a.changed else ""),
                f"{a.ready}/{a.desired}",
                f"{scheme}://127.0.0.1:{data.gateway_port}{a.endpoint}",
                num(traffic.requests_per_second) if traffic else "-",
                num(traffic.p50_ms) if traffic else "-",
                num(traffic.p99_ms) if traffic else "-",
                *((traffic.counts.get(k, "-") if traffic else "-") for k in ("2xx", "4xx", "5xx")),
                a.restarts,
                a.error or "",
            ]
        )
    headers = [
        "api",
        "status",
        "ready",
        "endpoint",
        "req/s",
        "p50 ms",
        "p99 ms",
        "2xx",
        "4xx",
        "5xx",
        "restarts",
        "error",
    ]
    click.echo(tabulate(rows, headers=headers))
    for batch_api in batch or []:  # no replicas at rest: their jobs are what to look at
        endpoint = f"{scheme}://127.0.0.1:{data.gateway_port}{batch_api.endpoint}"
        click.echo(f"BatchAPI {batch_api.name} at {endpoint}: workers start with each job; `stack jobs` lists them")
    if data.splitters:
        click.echo("")
        split_rows = [
            [
                s.name,
                f"{scheme}://127.0.0.1:{data.gateway_port}{s.endpoint}",
                " ".join(f"{api}={weight}" for api, weight in s.weights.items()),
                " ".join(f"{api}={share * 100:.1f}%" for api, share in s.observed.items()) if s.observed else "-",
                s.mirror or "-",
                _weights_from(s),
            ]
            for s in data.splitters
        ]
        headers = ["splitter", "endpoint", "weights", "observed (1m)", "mirror", "weights from"]
        click.echo(tabulate(split_rows, headers=headers))
        for s in data.splitters:
            if s.canary is not None:
                click.echo("\n" + _canary_text(s.name, s.canary))
    if data.calls:
        call_rows = [
            [
                f"{c.caller} → {c.callee}",
                num(c.calls_per_second),
                num(c.errors_per_second),
                "-" if c.calls is None else c.calls,
                "-" if c.errors is None else c.errors,
                num(c.p99_ms),
                c.error,
            ]
            for c in data.calls
        ]
        headers = ["calls", "calls/s", "errors/s", "total", "errors", "p99 ms", ""]
        click.echo("\n" + tabulate(call_rows, headers=headers))
    if data.gpus:
        gpu_rows = [
            [
                f"{g.index} {g.uuid}".strip(),
                g.name or "-",
                ", ".join(g.slots) or "free",
                f"{g.share:g} of 1",
                "-" if g.utilization is None else f"{g.utilization:.0%}",
                f"{_size(g.memory_used_bytes)} of {_size(g.memory_total_bytes)}",
            ]
            for g in data.gpus
        ]
        click.echo("\n" + tabulate(gpu_rows, headers=["gpu", "name", "slots", "placed", "utilization", "memory"]))
    for component in data.missing():
        click.echo(f"not running: the {component.name} ({component.detail}): {component.problem}")
    for note in data.notes:
        click.echo(f"note: {note}")
    if data.images is not None:
        click.echo(
            f"images: {data.images} on this host, {_size(data.images_bytes)} beyond the base image "
            "(`stack down --images` removes them)"
        )
    if not detail:
        return
    api = apis[0]
    replicas = [
        [r.id, r.state, r.health or "-", r.version, r.pid or "-", r.port or "-", _uptime(r.uptime_s), r.restarts]
        + ([r.gpu or "-", _size(r.gpu_memory_bytes)] if api.gpu_slots else [])
        + [r.last_event or "-"]
        for r in api.replicas
    ]
    headers = ["replica", "state", "health", "version", "pid", "port", "up", "restarts"]
    headers += ["gpu", "gpu memory"] if api.gpu_slots else []
    click.echo("\n" + tabulate(replicas, headers=[*headers, "last event"]))
    if api.events:
        click.echo("\nrecent events:\n" + "\n".join(f"  {e}" for e in api.events))
    if api.affinity is not None:
        _show_affinity(api.affinity)
    _show_decisions(api)


def _show_affinity(affinity: AffinityStatus) -> None:
    """Each affinity value's replicas (networking.affinity), what each replica holds, and the hit ratio."""
    ratio = affinity.hit_ratio
    shown = "-" if ratio is None else f"{ratio:.0%}"
    click.echo(f"\naffinity: hit ratio {shown} (requests whose replica held their value when they arrived)")
    holds = "unknown" if affinity.per_replica is None else str(affinity.per_replica)
    click.echo(f"  loads in the last minute: {affinity.loads_per_minute:g}; values one replica holds: {holds}")
    rows = [
        [value, ", ".join(replicas), affinity.in_flight.get(value, 0)] for value, replicas in affinity.models.items()
    ]
    if rows:
        from tabulate import tabulate

        click.echo(tabulate(rows, headers=["value", "routed to", "in flight"]))
    for replica, values in affinity.held.items():
        click.echo(f"  {replica} holds: {', '.join(values) or '-'}")


def _uptime(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


def _show_decisions(api: ApiStatus) -> None:
    """The autoscaler's recent changes of this API's count, and what it thinks now."""
    if not api.autoscaled:
        click.echo("\nautoscaler: off (min_replicas == max_replicas, or set by hand with `stack scale --force`)")
        return
    scaler = api.autoscaler
    if not scaler:
        click.echo("\nautoscaler: no decision yet")
        return
    click.echo(f"\nautoscaler: {scaler.last or 'no decision yet'}")
    for change in scaler.changes:
        at = time.strftime("%H:%M:%S", time.localtime(change.at))
        note = "" if change.applied else f" (not applied yet: {change.error})"
        if change.attempts > 1:
            note += f" ({change.attempts} attempts)"
        click.echo(f"  {at} {change.current} -> {change.desired} [{change.rule}] {change.reason}{note}")


def _size(value: int | None) -> str:
    return "-" if value is None else format_memory(value)


def show_live(status: StackStatus, loaded: LoadedSpec, scheme: str) -> None:
    """What `stack up` prints once the stack is live: each endpoint, and a curl to try."""
    gateway = f"{scheme}://127.0.0.1:{status.gateway_port}"
    click.echo(f"\nStack {status.project} is live.")
    for api in status.apis:
        click.echo(f"  {api.name:<16} {gateway}{api.endpoint}")
    for splitter in status.splitters:
        weights = " ".join(f"{api}={weight}" for api, weight in splitter.weights.items())
        canary = f"; canary {splitter.canary.api}: {splitter.canary.phase}" if splitter.canary else ""
        click.echo(f"  {splitter.name:<16} {gateway}{splitter.endpoint}  (splitter: {weights}{canary})")
    for batch in loaded.spec.batch_apis:
        click.echo(f"  {batch.name:<16} {gateway}{batch.endpoint}  (BatchAPI: POST a job, GET ?jobID=ID)")
    for note in status.notes:
        click.echo(f"note: {note}", err=True)
    insecure = " -k" if loaded.spec.gateway.tls is not None else ""  # 127.0.0.1 is not the certificate's name
    # A pipeline's entry, not one of its inner stages: the first API that no other API calls.
    called = {callee for api in loaded.spec.apis for callee in api.calls}
    entries = [api for api in status.apis if api.name not in called] or status.apis
    first = status.splitters[0] if status.splitters else entries[0] if entries else None
    if first is not None:
        sample = loaded.root / "sample.json"
        data = f"@{sample}" if sample.is_file() else "'{}'"
        click.echo(
            f"\nTry: curl{insecure} -X POST {gateway}{first.endpoint} -H 'Content-Type: application/json' -d {data}"
        )
    elif loaded.spec.batch_apis:
        batch = loaded.spec.batch_apis[0]
        job = """'{"workers": 1, "item_list": {"items": [1, 2, 3], "batch_size": 2}}'"""
        click.echo(
            f"\nTry: curl{insecure} -X POST {gateway}{batch.endpoint} -H 'Content-Type: application/json' -d {job}"
        )
