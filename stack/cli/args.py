"""What the `stack` commands that act on a running stack share: the target flags, the project
argument (first, or with -p), and resolving the target once."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stack.errors import WrongTarget
from stack.spec import SPEC_FILENAME, load_spec
from stack.targets import KINDS, open_target

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
    or `stack status` work in a shell that does not have them). Without a target flag or `target:` in
    stack.yaml, the default target is checked against the others: a stack of this project running on
    another target is named, with the flag to add, instead of a wrong answer about the default one."""
    loaded = load_spec(path, secrets=secrets)
    target = open_target(loaded, kind, gpus=gpus, gpu_mem=gpu_mem, registry=registry)
    if kind is None and loaded.spec.target is None:
        _refuse_if_elsewhere(target)
    return target


def _refuse_if_elsewhere(chosen: Target) -> None:
    if chosen.running():
        return
    for name in KINDS:
        if name == chosen.name:
            continue
        other = open_target(chosen.loaded, name)
        if other.running():
            context = click.get_current_context(silent=True)
            command = context.command_path if context is not None else "stack"
            project = chosen.loaded.spec.project
            raise WrongTarget(
                f"no {chosen.name} stack of project {project} runs here, but a {name} one does "
                f"(started with `stack up --{name}`): add --{name} (`{command} --{name}`), or set `target: "
                f"{name}` in {chosen.loaded.path}"
            )


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


def project_path(func: Any) -> Any:
    """A command on one project: `stack CMD [PATH]` or `stack CMD -p PATH`, the same on every command."""

    @functools.wraps(func)
    def wrapper(*args: Any, path: Path | None = None, path_option: Path | None = None, **kwargs: Any) -> Any:
        return func(*args, path=one_path(path, path_option), **kwargs)

    wrapper = click.argument("path", required=False, type=click.Path(path_type=Path))(wrapper)
    return path_option_flag(wrapper)


def one_path(path: Path | None, path_option: Path | None) -> Path:
    if path is not None and path_option is not None and path.resolve() != path_option.resolve():
        raise click.UsageError(f"two projects given ({path} and -p {path_option}): give one")
    return path_option or path or Path(".")


def split_args(
    path_option: Path | None, args: tuple[str, ...], usage: str, required: int = 1, optional: int = 0
) -> tuple[Path, list[str]]:
    """(project path, the remaining arguments): the path may come first, or with -p. A first argument is the
    project only when more arguments than the command's names came, or, where a name is optional, when it
    is a directory holding stack.yaml (or a spec file): `stack logs iris` names the API even beside a
    directory called iris."""
    rest = list(args)
    path = path_option
    most = required + optional
    if path is None and len(rest) > required and rest:
        if len(rest) > most:
            if not is_project(rest[0]):
                raise click.UsageError(f"{rest[0]!r} is neither a project directory nor a spec file; usage: {usage}")
            path = Path(rest.pop(0))
        elif is_project(rest[0], holding_spec=True):
            path = Path(rest.pop(0))
    if len(rest) > most:
        raise click.UsageError(f"too many arguments; usage: {usage}")
    if len(rest) < required:
        raise click.UsageError(f"missing arguments; usage: {usage}")
    return (path or Path(".")), rest


def is_project(arg: str, holding_spec: bool = False) -> bool:
    candidate = Path(arg)
    if candidate.is_file():
        return candidate.suffix in (".yaml", ".yml")
    return candidate.is_dir() and (not holding_spec or (candidate / SPEC_FILENAME).is_file())


def progress(line: str) -> None:
    click.echo(f"  {line}", err=True)
