"""The commands that show a running stack beyond `stack status`: `stack logs`."""

from __future__ import annotations

from pathlib import Path

import click

from stack.cli.args import path_option_flag, resolve_target, split_args, target_flag
from stack.spec.units import parse_duration


@click.command()
@click.argument("args", nargs=-1, required=True)
@path_option_flag
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--since", metavar="DURATION", help="Only lines of the last DURATION (30s, 5m, 2h).")
@target_flag
def logs(
    args: tuple[str, ...], path_option: Path | None, follow: bool, since: str | None, target_kind: str | None
) -> None:
    """The logs of every replica of an API, each line prefixed with its replica: `stack logs [PATH] API`."""
    path, rest = split_args(path_option, args, 1, "stack logs [PATH] API")
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
