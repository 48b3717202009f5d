"""What every target's images are made of: an API's image (the project, the replica runtime, its
requirements) and the controller's, their Dockerfiles and build contexts."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import jinja2

from stack import __version__
from stack.plan.serving import REPLICA_PORT
from stack.plan.templates import header, template_environment
from stack.spec import Api, LoadedSpec

BUILD_DIR = ".stack/build"  # one assembled build context per image, prepared by `stack up`
# uvloop: the faster event loop the replicas run on where it installs (Linux, macOS).
RUNTIME_REQUIREMENTS = ["aiohttp>=3.11", "prometheus-client>=0.21", "uvloop>=0.19; sys_platform != 'win32'"]
REPLICA_USER = 10001  # the unprivileged uid and gid replicas run as in their images
CONTROLLER_DOCKERFILE = "autoscaler.Dockerfile"  # the plan's file the controller's image is built from


def api_dockerfile_name(api: Api) -> str:
    """The plan's file an API's image is built from."""
    return f"{api.name}.Dockerfile"


def service_name(api: Api, version: str) -> str:
    """An API version's name: its build context, its Compose service (a rolling update runs two side by side)."""
    return f"{api.name}-{version}"


def build_context(root: Path, image_name: str) -> Path:
    """The directory `stack up` assembles for one image: project copy, runtime, wheelhouse, Dockerfile."""
    return root / BUILD_DIR / image_name


def controller_image() -> str:
    """The same code for every project, so one image per machine; tagged by release so plans stay stable,
    and `stack up` rebuilds it when the code's digest changed."""
    return f"stack-autoscaler:{__version__}"


def controller_requirements() -> list[str]:
    """stack-serve's own dependencies (no extras), from its installed metadata; boto3 for the S3 sources of
    BatchAPI jobs (the controller lists and reads them)."""
    return sorted([*(r for r in metadata.requires("stack-serve") or [] if "extra ==" not in r), "boto3"])


def controller_dockerfile(loaded: LoadedSpec, env: jinja2.Environment | None = None) -> str:
    """The controller image's Dockerfile (every container target's controller runs that image)."""
    build = loaded.spec.build
    return (
        (env or template_environment())
        .get_template("images/controller.Dockerfile.j2")
        .render(header=header(loaded), base_image=build.base_image, wheelhouse=build.wheelhouse)
    )


def api_dockerfile(loaded: LoadedSpec, api: Api, env: jinja2.Environment | None = None) -> str:
    """The Dockerfile of an API's image, the same for every target that builds one."""
    return (
        (env or template_environment())
        .get_template("images/api.Dockerfile.j2")
        .render(
            header=header(loaded),
            base_image=loaded.spec.build.base_image,
            wheelhouse=loaded.spec.build.wheelhouse,
            requirements=loaded.requirements_file(api) is not None,
            runtime_requirements=[json.dumps(r) for r in RUNTIME_REQUIREMENTS],
            replica_port=REPLICA_PORT,
            replica_user=REPLICA_USER,
        )
    )
