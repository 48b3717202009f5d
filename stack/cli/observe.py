"""The commands that show a running stack beyond `stack status`: `stack logs`, `stack dashboard`."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from stack.cli.args import path_option_flag, resolve_target, split_args, target_flag
from stack.spec.units import parse_duration


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
