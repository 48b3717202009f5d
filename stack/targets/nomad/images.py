"""Images for a Nomad stack: built as on Compose, tagged `REGISTRY/PROJECT-API:VERSION`, pushed to the
registry the Nomad clients pull from; and the controller's image beside them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from stack.errors import BuildError
from stack.plan.images import CONTROLLER_DOCKERFILE, api_dockerfile_name, service_name
from stack.plan.plan import Plan
from stack.plan.serving import extra_requirements
from stack.plan.versions import project_files
from stack.spec import Api, LoadedSpec
from stack.targets import build, images
from stack.targets.docker import docker

Progress = Callable[[str], None]


class ImagePusher:
    def __init__(self, loaded: LoadedSpec, registry: str) -> None:
        self.loaded = loaded
        self.project = loaded.spec.project
        self.registry = registry

    def api(self, api: Api, plan: Plan, progress: Progress) -> None:
        """Build (unless built already) and push the image the plan names for an API."""
        image, version = plan.images[api.name], plan.versions[api.name]
        if not build.image_exists(image):
            context = build.assemble(
                project_files(self.loaded),
                service_name(api, version),
                plan.files[api_dockerfile_name(api)],
                self.loaded.requirements_file(api),
                self.loaded.spec.build.base_image,
                self.loaded.spec.build.wheelhouse,
                progress,
                extra=extra_requirements(api, self.loaded.spec.tracing is not None),
            )
            build.build_image(context, image, progress, images.labels(self.project, api.name, version))
        self.push(image, progress)

    def controller(self, plan: Plan, progress: Progress) -> None:
        local = build.build_controller(self.loaded, plan.files[CONTROLLER_DOCKERFILE], progress)
        remote = f"{self.registry}/{local}"
        docker("tag", local, remote)
        self.push(remote, progress)

    def push(self, image: str, progress: Progress) -> None:
        progress(f"pushing {image}")
        result = subprocess.run(["docker", "push", image], capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            raise BuildError(
                f"pushing {image} to {self.registry} failed: {output[-1] if output else 'no output'}. Check that "
                f"the registry runs and this machine may push to it (`docker push {image}`; a registry without "
                "TLS must be listed in the engine's insecure-registries, 127.0.0.1 always is). Nothing was "
                "registered with Nomad."
            )
