"""The `stack` command line.

Errors are one clear paragraph and a non-zero exit; `--debug` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from stack import __version__
from stack.errors import StackError
from stack.spec import SpecError, load_spec

# Where `stack plan` writes by default, inside the project and ignored by builds' digests.
PLAN_DIR = ".stack/plan"


class StackGroup(click.Group):
    """Turns known failures into a short message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (StackError, SpecError) as exc:
            _fail(ctx, str(exc))
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            _fail(ctx, "interrupted")
        except Exception as exc:
            _fail(ctx, f"unexpected error: {type(exc).__name__}: {exc}", unexpected=True)


def _fail(ctx: click.Context, message: str, unexpected: bool = False) -> None:
    debug = (ctx.obj or {}).get("debug", False)
    if debug:
        traceback.print_exc()
    click.secho(f"error: {message}", fg="red", err=True)
    if unexpected and not debug:
        click.echo("Run again with --debug for the traceback.", err=True)
    ctx.exit(1)


@click.group(cls=StackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="stack")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Serve Python predictors as production prediction APIs on hardware you own."""
    ctx.obj = {"debug": debug}


# -- validate / init -----------------------------------------------------------------


@cli.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print problems as JSON.")
def validate(path: Path, as_json: bool) -> None:
    """Check stack.yaml and print every problem, or "ok"."""
    try:
        loaded = load_spec(path)
    except SpecError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "problems": [p.__dict__ for p in exc.problems]}, indent=2))
        else:
            click.echo(str(exc), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"ok": True, "project": loaded.spec.project, "apis": [a.name for a in loaded.spec.apis]}))
    else:
        click.echo(f"ok: {loaded.path} (project {loaded.spec.project}, {len(loaded.spec.apis)} API(s))")


@cli.command()
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Where to create it (default: ./NAME).")
def init(name: str, directory: Path | None) -> None:
    """Scaffold a working project: stack.yaml, predictor.py, requirements.txt, sample.json."""
    from stack.scaffold import scaffold

    target = directory or Path(name)
    created = scaffold(name, target)
    for path in created:
        click.echo(f"created {path}")
    click.echo(
        f"\nNext: cd {target} && stack serve .   then   curl -X POST localhost:8080/ -H 'Content-Type: "
        "application/json' -d @sample.json"
    )


# -- plan ------------------------------------------------------------------------------


@cli.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help=f"Output directory (default: {PLAN_DIR}/TARGET).")
@click.option("--nomad", is_flag=True, help="Render Nomad jobs instead of a Compose project.")
@click.option("--gpus", type=int, help="GPUs on the Docker host (default: ask nvidia-smi).")
@click.option(
    "--nomad-addr",
    default=lambda: os.environ.get("NOMAD_ADDR", "http://127.0.0.1:4646"),
    show_default="$NOMAD_ADDR or http://127.0.0.1:4646",
)
@click.option("--registry", default="", help="Image registry prefix for Nomad jobs, e.g. registry.local:5000.")
def plan(path: Path, output: Path | None, nomad: bool, gpus: int | None, nomad_addr: str, registry: str) -> None:
    """Render the files a target runs: Compose (default) or Nomad jobs."""
    from stack.plan import plan_compose, plan_nomad
    from stack.plan.render import PlanError, detect_gpus

    loaded = load_spec(path)
    target = "nomad" if nomad else "compose"
    out_dir = output or loaded.root / PLAN_DIR / target
    try:
        if nomad:
            result = plan_nomad(loaded, nomad_addr=nomad_addr, registry=registry)
        else:
            result = plan_compose(loaded, out_dir, host_gpus=gpus if gpus is not None else detect_gpus())
    except PlanError as exc:
        raise StackError(str(exc)) from exc
    for written in result.write(out_dir):
        click.echo(f"wrote {_shown(written)}")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- serve -----------------------------------------------------------------------------


@cli.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("--api", "api_name", help="Which API of stack.yaml (needed when it has several).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Default: log_format of stack.yaml, else text.")
@click.option(
    "--drain-delay",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds to keep serving after SIGTERM; no router sits in front of `stack serve`.",
)
def serve(
    path: Path, api_name: str | None, host: str, port: int, log_level: str, log_format: str | None, drain_delay: float
) -> None:
    """Run one API in this process, no Docker: PATH is a stack.yaml, its directory, or a predictor .py file."""
    from serving.config import CONFIG_ENV, ServingConfig

    if path.suffix == ".py":
        if not path.is_file():
            raise StackError(f"{path}: predictor file not found")
        config = ServingConfig(predictor_path=str(path.resolve()), api=path.stem.replace("_", "-"))
    else:
        from stack.plan.serving import replica_config

        loaded = load_spec(path)
        api = _pick_api(loaded.spec, api_name)
        config = replica_config(loaded, api)
    config = config.replace(
        host=host, port=port, log_level=log_level, drain_delay=drain_delay, log_format=log_format or config.log_format
    )
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    click.echo(
        f"Serving API {config.api} at http://{shown_host}:{port}/  (POST / to predict; Ctrl-C to stop)", err=True
    )
    os.environ[CONFIG_ENV] = config.to_json()
    sys.stdout.flush()
    # Replace this process: signals reach the server directly, and prometheus_client
    # is imported fresh with the multiprocess setting the server decides on.
    os.execv(sys.executable, [sys.executable, "-m", "serving"])


def _pick_api(spec: Any, name: str | None) -> Any:
    if name:
        try:
            return spec.api(name)
        except KeyError as exc:
            raise StackError(str(exc.args[0])) from exc
    if len(spec.apis) > 1:
        names = ", ".join(a.name for a in spec.apis)
        raise StackError(f"stack.yaml has {len(spec.apis)} APIs ({names}); choose one with --api NAME")
    return spec.apis[0]


def main() -> None:
    cli(prog_name="stack")


if __name__ == "__main__":
    main()
