"""The commands that show a running stack beyond `stack status`: `stack logs`, `stack dashboard`, `stack usage`."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path

import click
import requests

from stack.cli.args import path_option_flag, resolve_target, split_args, target_flag
from stack.errors import StackError
from stack.spec.units import parse_duration
from stack.usage import usage as key_usage


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[PATH] API")
@path_option_flag
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--since", metavar="DURATION", help="Only lines of the last DURATION (30s, 5m, 2h).")
@target_flag
def logs(
    args: tuple[str, ...], path_option: Path | None, follow: bool, since: str | None, target_kind: str | None
) -> None:
    """The logs of every replica of an API, each line prefixed with its replica: `stack logs [PATH] API`."""
    path, rest = split_args(path_option, args, "stack logs [PATH] API", required=1)
    if not rest:
        raise click.UsageError("name the API: stack logs [PATH] API")
    try:
        window = parse_duration(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (like 30s, 5m or 2h)", param_hint="--since") from None
    try:
        for line in resolve_target(path, target_kind).logs(rest[0], follow, window):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@path_option_flag
@click.option("--open", "open_browser", is_flag=True, help="Open it in this machine's browser too.")
@target_flag
def dashboard(path: Path | None, path_option: Path | None, open_browser: bool, target_kind: str | None) -> None:
    """The URL of the running stack's live dashboard (read-only, on this machine): `stack dashboard [PATH]`."""
    where, _ = split_args(path_option, (str(path),) if path is not None else (), "stack dashboard [PATH]", required=0)
    url = resolve_target(where, target_kind).dashboard_url()
    click.echo(url)
    if "key=API_KEY" in url:
        click.echo("replace API_KEY with one of gateway.api_keys (the data asks for it)", err=True)
    if open_browser and not webbrowser.open(url):
        click.echo("no browser to open here: open the URL above", err=True)


@click.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@path_option_flag
@click.option("--since", default="24h", show_default=True, metavar="DURATION", help="The window (30m, 24h, 7d).")
@click.option("--json", "as_json", is_flag=True, help="Print {'keys': [...]} as JSON.")
@click.option("--prometheus", "prometheus_url", metavar="URL", help="The stack's Prometheus (needed on Nomad).")
@target_flag
def usage(
    path: Path | None,
    path_option: Path | None,
    since: str,
    as_json: bool,
    prometheus_url: str | None,
    target_kind: str | None,
) -> None:
    """What each named key (gateway.keys) used of each API: `stack usage [PATH] [--since 24h] [--json]`."""
    where, _ = split_args(path_option, (str(path),) if path is not None else (), "stack usage [PATH]", required=0)
    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (like 30m, 24h or 7d)", param_hint="--since") from None
    url = prometheus_url or resolve_target(where, target_kind).prometheus_url()
    try:
        rows = key_usage(url, window)
    except (requests.RequestException, ValueError) as exc:
        raise StackError(f"cannot read the usage from Prometheus at {url}: {exc}") from None
    if as_json:
        click.echo(json.dumps({"since_s": window, "keys": [r.to_dict() for r in rows]}, indent=2))
        return
    if not rows:
        click.echo(f"no named key was used in the last {since} (gateway.keys)")
        return
    from tabulate import tabulate

    table = [
        [
            r.name,
            r.api,
            r.requests,
            r.rate_limited,
            r.forbidden,
            f"{r.predict_seconds:g}",
            f"{r.gpu_seconds:g}",
            format_bytes(r.bytes_in),
            format_bytes(r.bytes_out),
        ]
        for r in rows
    ]
    headers = ["key", "api", "requests", "rate limited", "forbidden", "predict s", "GPU s", "in", "out"]
    click.echo(f"usage over the last {since}:")
    click.echo(tabulate(table, headers=headers))


def format_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:g} {unit}"
        value = round(value / 1000, 1)
    return f"{value:g} TB"
