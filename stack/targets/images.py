"""The images `stack up` builds on this host (Compose; Nomad's local copies), and what keeps them from piling up.

Every rollout builds an image per API (`<project>-<api>:<version>`, labelled with the project, API and
version). After a successful rollout each API keeps its current image and the newest ones before it, up to
`build.keep_images` (default 2: the current one and the one a rollback runs); the others are removed by
tag (`docker rmi TAG`: never by id, which images built from the same files share, and never one a container
still uses). `stack down --images` removes every image of the project; `stack status` says how much disk
they take beyond the base image they share.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from stack.spec.units import format_memory
from stack.targets.docker import docker

PROJECT = "stack.project"
API = "stack.api"
VERSION = "stack.version"


@dataclass(frozen=True)
class Image:
    tag: str  # repository:tag
    id: str
    api: str
    created: str  # ISO time, as Docker has it
    size: int  # bytes, base image layers included


@dataclass(frozen=True)
class ImageUse:
    """What `stack status` says of the project's images."""

    count: int
    bytes: int  # beyond the base image they share (what `stack down --images` frees)
    base: str  # the base image

    def line(self) -> str:
        size = format_memory(self.bytes)
        return f"images: {self.count} ({size} beyond {self.base}; `stack down --images` removes them)"


def labels(project: str, api: str, version: str) -> dict[str, str]:
    return {PROJECT: project, API: api, VERSION: version}


def project_images(project: str, apis: list[str], registry: str = "") -> list[Image]:
    """The images built for this project: labelled as its own, or (built before images were labelled) named
    `[REGISTRY/]<project>-<api>` for one of its APIs."""
    refs = docker("images", "--filter", f"label={PROJECT}={project}", "--format", "{{.Repository}}:{{.Tag}}").split()
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    for api in apis:
        refs += docker("images", f"{prefix}{project}-{api}", "--format", "{{.Repository}}:{{.Tag}}").split()
    refs = sorted({ref for ref in refs if not ref.endswith(":<none>")})
    if not refs:
        return []
    result = subprocess.run(["docker", "image", "inspect", *refs], capture_output=True, text=True)
    found = json.loads(result.stdout) if result.stdout.strip() else []
    images = []
    for ref, item in zip(refs, found, strict=False):
        tags = item.get("RepoTags") or []
        tag = ref if ref in tags else (tags[0] if tags else ref)
        labelled = (item.get("Config") or {}).get("Labels") or {}
        if labelled.get(PROJECT, project) != project:
            continue  # another project's image that happens to share the name
        api = labelled.get(API) or tag.rsplit(":", 1)[0].rsplit("/", 1)[-1].removeprefix(f"{project}-")
        images.append(Image(tag, item.get("Id", ""), api, item.get("Created", ""), int(item.get("Size") or 0)))
    return images


def prune(project: str, api: str, current: str, keep: int, registry: str = "") -> list[Image]:
    """Remove an API's images beyond the newest `keep` (the current one always stays); the removed ones."""
    mine = sorted(
        (i for i in project_images(project, [api], registry) if i.api == api), key=lambda i: i.created, reverse=True
    )
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    current_tag = f"{prefix}{project}-{api}:{current}"
    kept = [i for i in mine if i.tag == current_tag]
    kept += [i for i in mine if i.tag != current_tag][: max(keep - len(kept), 0)]
    removed = []
    for image in mine:
        if image in kept:
            continue
        # By tag: another tag of the same id (an identical build) keeps the layers. In use: Docker refuses.
        if subprocess.run(["docker", "rmi", image.tag], capture_output=True).returncode == 0:
            removed.append(image)
    return removed


def remove_all(project: str, apis: list[str], registry: str = "") -> list[Image]:
    removed = []
    for image in project_images(project, apis, registry):
        if subprocess.run(["docker", "rmi", image.tag], capture_output=True).returncode == 0:
            removed.append(image)
    return removed


def disk_use(project: str, apis: list[str], base_image: str, registry: str = "") -> ImageUse | None:
    images = project_images(project, apis, registry)
    if not images:
        return None
    result = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", base_image], capture_output=True)
    try:
        base = int(result.stdout.strip() or 0) if result.returncode == 0 else 0
    except ValueError:
        base = 0
    distinct = {i.id: i.size for i in images}  # two tags of one image take its disk once
    return ImageUse(len(images), sum(max(size - base, 0) for size in distinct.values()), base_image)


def removed_text(removed: list[Image], where: str = "this host") -> str:
    if not removed:
        return f"no image of the stack on {where}"
    return f"removed {len(removed)} image(s) from {where}: " + ", ".join(i.tag for i in removed)


def note(project: str, apis: list[str], base_image: str, registry: str = "") -> str:
    """What of the stack's images is left on this host, and how to remove it ("" for nothing)."""
    use = disk_use(project, apis, base_image, registry)
    return use.line() if use is not None else ""
