"""What the `stack` commands that act on a running stack share: the target flags, the project
argument (first, or with -p), and resolving the target once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stack.spec import load_spec
from stack.targets import open_target

if TYPE_CHECKING:
    from stack.targets.base import Target


def resolve_target(
    path: Path,
    kind: str | None,
    gpus: int | None = None,
    registry: str | None = None,
    secrets: bool = False,
    gpu_mem: int | None = None,
) -> Target:
    """`secrets`: resolve the API keys' environment variables (only `stack up` needs them: `stack down`
    or `stack status` work in a shell that does not have them)."""
    return open_target(load_spec(path, secrets=secrets), kind, gpus=gpus, gpu_mem=gpu_mem, registry=registry)


def target_flag(func: Any) -> Any:
    """--local / --nomad / --compose, one choice; without any, `target:` of stack.yaml, else Compose."""
    flags = [
        ("--nomad", "nomad", "A Nomad cluster (NOMAD_ADDR, NOMAD_TOKEN, ... as Nomad's CLI reads them)."),
        ("--local", "local", "The local target: processes behind Traefik, no Docker."),
        ("--compose", "compose", "Docker Compose on this machine (the default)."),
    ]
    for flag, value, help_text in flags:
        func = click.option(flag, "target_kind", flag_value=value, default=None, help=help_text)(func)
    return func


def path_option_flag(func: Any) -> Any:
    return click.option(
        "-p",
        "--path",
        "path_option",
        type=click.Path(path_type=Path),
        help="The project: a directory with stack.yaml, or a spec file (also accepted as the first argument).",
    )(func)


def split_args(path_option: Path | None, args: tuple[str, ...], names: int, usage: str) -> tuple[Path, list[str]]:
    """(project path, the remaining arguments): the path may come first, or with -p."""
    rest = list(args)
    path = path_option
    if path is None and len(rest) > names - 1 and rest and is_project(rest[0]):
        path = Path(rest.pop(0))
    if path is None and len(rest) > names:
        raise click.UsageError(f"{rest[0]!r} is neither a project directory nor a spec file; usage: {usage}")
    if len(rest) > names:
        raise click.UsageError(f"too many arguments; usage: {usage}")
    return (path or Path(".")), rest


def is_project(arg: str) -> bool:
    candidate = Path(arg)
    return candidate.is_dir() or (candidate.is_file() and candidate.suffix in (".yaml", ".yml"))


def progress(line: str) -> None:
    click.echo(f"  {line}", err=True)
