"""What `stack up` sets up on a Compose host besides the containers Compose starts: the controller's
files, the replicas' exit-reason directory, and each BatchAPI's worker template."""

from __future__ import annotations

import os
from pathlib import Path

from stack import routes
from stack.atomic import write_json_atomic
from stack.plan.images import REPLICA_USER, service_name
from stack.spec import Api, LoadedSpec
from stack.targets.compose.engine import PROJECT_LABEL, ComposeProject, Progress
from stack.targets.compose.plan import CONTROL_DIR, EXITS_DIR
from stack.targets.docker import docker
from stack.tls import TLS_FILE, tls_files, write_config


def prepare_control_dir(loaded: LoadedSpec, state_dir: Path) -> None:
    """The controller's files exist before anything reads them (Docker would create root-owned dirs)."""
    control = loaded.root / CONTROL_DIR
    for sub in ("routes", "targets", "upstreams"):
        (control / sub).mkdir(parents=True, exist_ok=True)
        (control / sub).chmod(0o755)
    if not (control / "routes" / routes.ROUTES_FILE).exists():
        routes.write(control / "routes", routes.render([]))
    if not (control / "targets" / "replicas.json").exists():
        write_json_atomic(control / "targets" / "replicas.json", [])
    # The gateway's certificate (and client CA) is there before Traefik starts: never a moment of TLS
    # without the client-certificate check. The controller keeps it current from then on.
    files = tls_files(loaded.root, loaded.spec.gateway.tls)
    if files is not None:
        write_config(control / "routes", files)
    else:
        (control / "routes" / TLS_FILE).unlink(missing_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)


def prepare_exits_dir(plan_dir: Path) -> None:
    """Where replicas write why they could not start (serving.exit_reason): theirs to write, nobody else's
    to read (it may quote a predictor's error), made before Docker would make it root's."""
    exits = plan_dir / EXITS_DIR
    exits.mkdir(mode=0o700, parents=True, exist_ok=True)
    exits.chmod(0o700)
    if os.geteuid() == 0:  # replicas run as the image's user then (stack.targets.compose.plan)
        os.chown(exits, REPLICA_USER, REPLICA_USER)


def batch_templates(engine: ComposeProject, apis: list[Api], versions: dict[str, str], progress: Progress) -> None:
    """Each BatchAPI's worker template: its service's container, created and never started (the controller
    copies it per worker, stack.targets.compose.batch_workers); the templates of older versions go."""
    if not apis:
        return
    services = [service_name(api, versions[api.name]) for api in apis]
    engine.compose("create", "--no-recreate", *services)
    for api in apis:
        labels = [f"label={PROJECT_LABEL}={engine.project}", f"label=stack.batch={api.name}"]
        listed = '{{.ID}} {{.Label "stack.version"}} {{.Label "stack.job"}}'
        stale = docker("ps", "-a", *(f"--filter={label}" for label in labels), f"--format={listed}")
        for line in stale.splitlines():
            container, version, *job = line.split()
            if version != versions[api.name] and not job:
                docker("rm", "-f", container)
        progress(f"{api.name}: BatchAPI ready for jobs (workers start with each job)")
