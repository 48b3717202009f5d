"""The `stack` command line.

Errors are one clear paragraph and a non-zero exit; `--debug` adds the traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stack import __version__
from stack.atomic import ProjectLock
from stack.cli.args import (
    is_project,
    path_option_flag,
    progress,
    project_path,
    resolve_target,
    split_args,
    target_flag,
)
from stack.cli.observe import dashboard, logs, usage
from stack.cli.show import show_live, show_status
from stack.errors import StackError
from stack.spec import SpecError, load_spec
from stack.tls import keys_in_clear

if TYPE_CHECKING:
    from stack.targets.base import Target

# Where `stack plan` writes by default, inside the project and ignored by builds' digests.
PLAN_DIR = ".stack/plan"


class StackGroup(click.Group):
    """Turns known failures into a short message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StackError as exc:
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
@project_path
@click.option("--json", "as_json", is_flag=True, help="Print problems as JSON.")
def validate(path: Path, as_json: bool) -> None:
    """Check stack.yaml and print every problem, or "ok"."""
    try:
        loaded = load_spec(path)
        broken = loaded.compile_problems()
        if broken:
            raise SpecError(broken)
    except SpecError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "problems": [p.__dict__ for p in exc.problems]}, indent=2))
        else:
            click.echo(str(exc), err=True)
        sys.exit(1)
    placed = _placement_problem(loaded)
    if placed is not None:
        if as_json:
            click.echo(json.dumps({"ok": False, "problems": [{"file": str(loaded.path), "message": placed}]}, indent=2))
        else:
            click.echo(f"{loaded.path}: {placed}", err=True)
        sys.exit(1)
    if as_json:
        body = {"ok": True, "project": loaded.spec.project, "apis": [a.name for a in loaded.spec.every_api]}
        click.echo(json.dumps({**body, "warnings": loaded.warnings}))
    else:
        _warn(loaded.warnings)
        click.echo(f"ok: {loaded.path} (project {loaded.spec.project}, {len(loaded.spec.every_api)} API(s))")


def _placement_problem(loaded: Any) -> str | None:
    """Where this machine's GPUs can be seen (nvidia-smi): whether the GPU APIs' slots fit them."""
    from stack.errors import PlanError
    from stack.plan.gpus import detect_gpus, place

    if not any(api.compute.gpu for api in loaded.spec.apis):
        return None
    found = detect_gpus()
    if found is None:
        return None
    try:
        place(loaded.spec.apis, found)
    except PlanError as exc:
        return str(exc)
    return None


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@cli.command()
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Where to create it (default: ./NAME).")
def init(name: str, directory: Path | None) -> None:
    """Scaffold a working project: stack.yaml, predictor.py, requirements.txt, sample.json."""
    from stack.cli.scaffold import scaffold

    target = directory or Path(name)
    created = scaffold(name, target)
    for path in created:
        click.echo(f"created {path}")
    click.echo(
        f"\nNext: cd {target} && stack serve .   then   curl -X POST localhost:8080/ -H 'Content-Type: "
        "application/json' -d @sample.json"
    )


@cli.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write (default: stack.yaml beside it).")
@click.option("--project", help="The project name (default: the directory's name).")
@click.option("--force", is_flag=True, help="Overwrite the output file.")
def import_(source: Path, output: Path | None, project: str | None, force: bool) -> None:
    """Convert a Cortex v0.2x cortex.yaml into a stack.yaml, listing what was dropped and why."""
    from stack.cli.cortex_import import import_file

    target = output or source.parent / "stack.yaml"
    imported = import_file(source, target, project, force)
    click.echo(f"wrote {target} ({len(imported.spec['apis'])} API(s))")
    for line in imported.dropped:
        click.echo(f"  dropped {line}")
    try:
        load_spec(target)
    except SpecError as exc:
        click.echo(f"\n{target} needs a fix before `stack up`:\n{exc}", err=True)
        sys.exit(1)
    click.echo(f"ok: `stack validate {target}` passes")


# -- plan ------------------------------------------------------------------------------


@cli.command()
@project_path
@click.option("-o", "--output", type=click.Path(path_type=Path), help=f"Output directory (default: {PLAN_DIR}/TARGET).")
@click.option("--nomad", is_flag=True, help="Render Nomad jobs instead of a Compose project (also `target: nomad`).")
@click.option("--gpus", type=int, help="GPUs on the Docker host (default: ask nvidia-smi).")
@click.option("--gpu-mem", help="The memory of each of those GPUs, e.g. 80Gi (default: nvidia-smi's answer).")
@click.option(
    "--nomad-addr",
    default=lambda: os.environ.get("NOMAD_ADDR", "http://127.0.0.1:4646"),
    show_default="$NOMAD_ADDR or http://127.0.0.1:4646",
    help="The cluster the jobs name (its address goes into the Prometheus and controller jobs).",
)
@click.option("--registry", default="", help="Image registry prefix for Nomad jobs, e.g. registry.local:5000.")
def plan(
    path: Path, output: Path | None, nomad: bool, gpus: int | None, gpu_mem: str | None, nomad_addr: str, registry: str
) -> None:
    """Render the files a target runs: Compose (default) or Nomad jobs; print where each GPU API's
    replica slots go."""
    from stack.plan.gpus import host_gpus
    from stack.targets.compose.plan import plan as plan_compose
    from stack.targets.nomad.plan import plan as plan_nomad

    loaded = load_spec(path)
    _warn(loaded.warnings)
    nomad = nomad or loaded.spec.target == "nomad"
    registry = registry or loaded.spec.build.registry or ""
    target = "nomad" if nomad else "compose"
    out_dir = output or loaded.root / PLAN_DIR / target
    if nomad:
        result = plan_nomad(loaded, nomad_addr=nomad_addr, registry=registry)
    else:
        result = plan_compose(loaded, out_dir, host_gpus=host_gpus(gpus, _memory_flag(gpu_mem)))
    for written in result.write(out_dir):
        click.echo(f"wrote {_shown(written)}")
    if result.placement.slots:
        click.echo("\nGPU placement (GPU: replica slots):")
        for line in result.placement.lines():
            click.echo(f"  {line}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


def _memory_flag(value: str | None) -> int | None:
    """--gpu-mem's size, or a usage error naming the flag."""
    if value is None:
        return None
    from stack.spec.units import parse_memory

    try:
        return parse_memory(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpu-mem") from None


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- serve -----------------------------------------------------------------------------


@cli.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("--api", "api_name", help="Which API of stack.yaml (needed when it has several).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where to listen (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=int, help="The port to answer on.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="The replica's log level.",
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
    from serving.runner import BANNER_ENV

    project_env: tuple[dict[str, str], Path] | None = None
    if path.suffix == ".py":
        if not path.is_file():
            raise StackError(f"{path}: predictor file not found")
        config = ServingConfig(predictor_path=str(path.resolve()), api=path.stem.replace("_", "-"))
    else:
        from stack.cli.preflight import serve_warnings
        from stack.plan.serving import replica_config

        loaded = load_spec(path)
        api = _pick_api(loaded.spec, api_name)
        config = replica_config(loaded, api)
        project_env = (dict(api.predictor.env), loaded.root)
        _warn(serve_warnings(loaded, api))
    config = config.replace(
        host=host, port=port, log_level=log_level, drain_delay=drain_delay, log_format=log_format or config.log_format
    )
    os.environ[CONFIG_ENV] = config.to_json()
    # The replica prints "Serving API ... at ..." itself, once it is ready: not before a taken
    # port or a failing __init__ could still stop it.
    os.environ[BANNER_ENV] = "1"
    # Like a replica: predictor.env set, and the project's root as the working directory
    # (predictors open files relative to it).
    if project_env is not None:
        os.environ.update(project_env[0])
        os.chdir(project_env[1])
    sys.stdout.flush()
    # Replace this process: signals reach the server directly, and prometheus_client
    # is imported fresh with the multiprocess setting the server decides on.
    os.execv(sys.executable, [sys.executable, "-m", "serving"])


def _pick_api(spec: Any, name: str | None) -> Any:
    if name:
        return spec.api(name)
    if len(spec.apis) > 1:
        names = ", ".join(a.name for a in spec.apis)
        raise StackError(f"stack.yaml has {len(spec.apis)} APIs ({names}); choose one with --api NAME")
    return spec.apis[0]


# -- targets: up / down / status / logs / scale --------------------------------------------
# The target is resolved once, here; every command then talks to the Target protocol alone.


@cli.command()
@project_path
@target_flag
@click.option("--gpus", type=int, help="GPUs on this host (default: ask nvidia-smi).")
@click.option("--gpu-mem", help="The memory of each of those GPUs, e.g. 80Gi (default: nvidia-smi's answer).")
@click.option("--registry", help="Nomad: where to push images, HOST:PORT (default: build.registry of stack.yaml).")
def up(path: Path, target_kind: str | None, gpus: int | None, gpu_mem: str | None, registry: str | None) -> None:
    """Start the stack, or update it in place (a rolling update) when it runs."""
    target: Target | None = None
    try:
        target = resolve_target(path, target_kind, gpus, registry, secrets=True, gpu_mem=_memory_flag(gpu_mem))
        broken = target.loaded.compile_problems()
        if broken:
            raise SpecError(broken)
        _warn(target.loaded.warnings + keys_in_clear(target.loaded.spec.gateway, target.name))
        with ProjectLock(target.loaded.root, f"stack up ({target.name})"):
            status = target.up(progress)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut this line short
        left = target.left_running() if target is not None else "nothing was started"
        click.echo(f"\ninterrupted: {left}", err=True)
        sys.exit(130)
    show_live(status, target.loaded, _scheme(target))


@cli.command()
@project_path
@target_flag
@click.option(
    "--volumes",
    "--purge",
    "volumes",
    is_flag=True,
    help="Also remove what the stack keeps: Compose volumes (Prometheus data); Nomad: purge the jobs.",
)
@click.option("--images", is_flag=True, help="Also remove the images built for the stack on this host.")
def down(path: Path, target_kind: str | None, volumes: bool, images: bool) -> None:
    """Stop and remove everything of the stack."""
    target = resolve_target(path, target_kind)
    with ProjectLock(target.loaded.root, f"stack down ({target.name})"):
        stopped = target.down(volumes)
        click.echo("stopped" if stopped else "nothing was running")
        if images:
            click.echo(target.remove_images())
        elif note := target.image_note():
            click.echo(f"note: {note}", err=True)


@cli.command()
@click.argument("args", nargs=-1, metavar="[PATH] [API]")
@path_option_flag
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@target_flag
def status(args: tuple[str, ...], path_option: Path | None, as_json: bool, target_kind: str | None) -> None:
    """Each API's state and replicas: `stack status [PATH] [API]`; with API, per-replica detail and events."""
    path, rest = split_args(path_option, args, "stack status [PATH] [API]", required=0, optional=1)
    api = rest[0] if rest else None
    target = resolve_target(path, target_kind)
    if api is not None:
        target.loaded.spec.api(api)  # UnknownApi names the ones it has
    data = target.status()
    apis = [a for a in data.apis if api is None or a.name == api]
    if as_json:
        document = data.to_dict()
        document["apis"] = [a.to_dict() for a in apis]
        click.echo(json.dumps(document, indent=2))
        return
    show_status(data, apis, api is not None, _scheme(target), None if api else target.loaded.spec.batch_apis)


@cli.command()
@click.argument("args", nargs=-1, metavar="[PATH] [API]")
@path_option_flag
@click.option("--json", "as_json", is_flag=True, help="Print Cortex's job_status objects as JSON.")
@target_flag
def jobs(args: tuple[str, ...], path_option: Path | None, as_json: bool, target_kind: str | None) -> None:
    """The jobs of the stack's BatchAPIs, newest first: `stack jobs [PATH] [API]`."""
    from stack.control.batch.client import list_jobs, show_jobs

    path, rest = split_args(path_option, args, "stack jobs [PATH] [API]", required=0, optional=1)
    target = resolve_target(path, target_kind, secrets=True)
    found = list_jobs(target.loaded, f"{_scheme(target)}://127.0.0.1:{target.status().gateway_port}", *rest[:1])
    click.echo(json.dumps(found, indent=2)) if as_json else show_jobs(found)


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[PATH] API REPLICAS")
@path_option_flag
@click.option(
    "--force",
    is_flag=True,
    help="Take the API from the autoscaler until the next `stack up` (needed for any count of an autoscaled API), "
    "and allow counts outside min_replicas..max_replicas.",
)
@target_flag
def scale(args: tuple[str, ...], path_option: Path | None, force: bool, target_kind: str | None) -> None:
    """Set an API's replica count by hand: `stack scale [PATH] API REPLICAS`."""
    path, rest = split_args(path_option, args, "stack scale [PATH] API REPLICAS", required=2)
    if len(rest) != 2 or not rest[1].isdigit():
        raise click.UsageError("usage: stack scale [PATH] API REPLICAS (a count of 0 or more)")
    api, replicas = rest[0], int(rest[1])
    target = resolve_target(path, target_kind)
    with ProjectLock(target.loaded.root, f"stack scale {api} {replicas} ({target.name})"):
        target.scale(api, replicas, force, progress)
    click.echo(f"{api} scaled to {replicas}")


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[PATH] NAME API=WEIGHT...")
@path_option_flag
@target_flag
def split(args: tuple[str, ...], path_option: Path | None, target_kind: str | None) -> None:
    """Change a splitter's weights on the running stack: `stack split [PATH] NAME API=W ...`.

    No replica restarts; the weights hold until the next `stack up` re-applies stack.yaml's.
    """
    from stack.splits import parse_weights

    rest = list(args)
    path = path_option
    if path is None and rest and "=" not in rest[0] and len(rest) > 1 and "=" not in rest[1] and is_project(rest[0]):
        path = Path(rest.pop(0))
    if len(rest) < 2 or "=" in rest[0]:
        raise click.UsageError("usage: stack split [PATH] NAME API=WEIGHT [API=WEIGHT ...]")
    name, weights = rest[0], parse_weights(tuple(rest[1:]))
    target = resolve_target(path or Path("."), target_kind)
    with ProjectLock(target.loaded.root, f"stack split {name} ({target.name})"):
        target.split(name, weights)
    shown = ", ".join(f"{api}={weight}" for api, weight in weights.items())
    click.echo(f"{name}: {shown} (until the next `stack up`)")


@cli.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--target", type=click.Choice(["compose", "nomad"]), default="compose", show_default=True, help="What to scale."
)
@click.option(
    "--prometheus",
    "prometheus_url",
    envvar="STACK_PROMETHEUS_URL",
    help="Prometheus' URL (default: 127.0.0.1 at prometheus.port).",
)
@click.option("--metrics-port", default=9100, show_default=True, type=int, help="Port of /metrics and /status.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="Where to keep the last decisions (default: PATH/.stack/autoscaler).",
)
@click.option(
    "--nomad-addr",
    envvar="NOMAD_ADDR",
    default="http://127.0.0.1:4646",
    show_default=True,
    help="Nomad: the cluster's HTTP API.",
)
@click.option(
    "--policy",
    type=click.Choice(["stack", "cortex"]),
    default="stack",
    show_default=True,
    help="cortex: Cortex's algorithm alone, without our starting credit, draining hold and panic mode.",
)
@click.option(
    "--control-dir",
    type=click.Path(path_type=Path),
    help="Compose: where the controller writes the gateway's routes and Prometheus' targets "
    "(default with PATH: PATH/.stack/compose/control).",
)
@click.option("--network", help="Compose, with --control-dir: the stack's network (default: PROJECT-stack).")
@click.option("--replica-port", default=8888, show_default=True, type=int, help="The replicas' port, inside.")
@click.option(
    "--activator-port",
    type=int,
    help="Nomad: also serve the activator that wakes APIs scaled to zero here (how the planned job runs it).",
)
def autoscale(
    path: Path | None,
    target: str,
    prometheus_url: str | None,
    metrics_port: int,
    state_dir: Path | None,
    nomad_addr: str,
    policy: str,
    control_dir: Path | None,
    network: str | None,
    replica_port: int,
    activator_port: int | None,
) -> None:
    """Run a stack's controller: the autoscaler (counts follow requests in flight, read from Prometheus),
    the canaries, the activator and, on Compose, the routes and the replicas' upkeep.

    With PATH, the bounds come from its stack.yaml; without, from $STACK_AUTOSCALER_CONFIG
    (how the planned autoscaler service and job run it). The local target runs it in its supervisor.
    """
    import asyncio
    import logging

    from stack.control.autoscale.config import AutoscalerConfig, config_of
    from stack.control.autoscale.policy import POLICIES
    from stack.control.runtime import ControlSettings, run_control
    from stack.targets import open_control
    from stack.targets.compose.plan import CONTROL_DIR
    from stack.targets.compose.settings import ComposeSettings
    from stack.targets.nomad.settings import NomadControlSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    if path is not None:
        loaded = load_spec(path)
        config = config_of(loaded)
        state_dir = state_dir or loaded.root / ".stack" / "autoscaler"
        control_dir = control_dir or loaded.root / CONTROL_DIR
        prometheus_url = prometheus_url or f"http://127.0.0.1:{loaded.spec.prometheus.port}"
    else:
        try:
            config = AutoscalerConfig.from_env()
        except ValueError as exc:
            raise StackError(str(exc)) from None
    if prometheus_url is None:
        raise StackError("--prometheus is needed without a stack.yaml")
    if activator_port is not None and target != "nomad":
        raise StackError("--activator-port is for the Nomad target (Compose serves it with --control-dir)")
    if target == "compose" and (control_dir is None or state_dir is None):
        raise StackError("the Compose controller needs --control-dir and --state-dir (or a stack.yaml)")
    settings = ControlSettings(config, prometheus_url, metrics_port, state_dir)
    own: ComposeSettings | NomadControlSettings
    if target == "compose":
        assert control_dir is not None
        own = ComposeSettings(control_dir, network or f"{config.project}-stack", replica_port)
    else:
        own = NomadControlSettings(nomad_addr, activator_port)
    asyncio.run(run_control(open_control(target, settings, own), POLICIES[policy]))


def _scheme(target: Target) -> str:
    return "https" if target.loaded.spec.gateway.tls is not None else "http"


cli.add_command(logs)
cli.add_command(dashboard)
cli.add_command(usage)


def main() -> None:
    cli(prog_name="stack")
