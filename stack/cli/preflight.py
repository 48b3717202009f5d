"""What `stack serve` says before it runs an API in this very Python: it builds no image, so the
project's requirements and the API's GPUs are whatever this host and environment have. A Cortex user
expects requirements.txt to be honoured and `gpu: 1` to mean a GPU; here they get told when not."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from stack.plan.gpus import detect_gpus
from stack.spec import Api, LoadedSpec


def unmet_requirements(requirements: Path) -> list[str]:
    """Each line of a requirements file this environment does not satisfy: `name==1.0 (installed: 2.0)`."""
    unmet = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):  # options (-r, --index-url, -e): pip's business
            continue
        try:
            wanted = Requirement(line)
        except InvalidRequirement:
            continue
        if wanted.marker is not None and not wanted.marker.evaluate():
            continue
        try:
            installed = metadata.version(wanted.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{line} (not installed)")
            continue
        if wanted.specifier and not wanted.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line} (installed: {installed})")
    return unmet


def serve_warnings(loaded: LoadedSpec, api: Api) -> list[str]:
    warnings = []
    requirements = loaded.requirements_file(api)
    if requirements is not None:
        unmet = unmet_requirements(requirements)
        if unmet:
            warnings.append(
                f"stack serve runs in this Python and installs nothing; {requirements.name} asks for "
                f"{', '.join(unmet)}: `pip install -r {requirements}` (stack up builds an image with them)"
            )
    if api.compute.gpu and not detect_gpus():
        warnings.append(
            f"API {api.name} asks for compute.gpu {api.compute.gpu:g}, but this host shows no GPU (nvidia-smi "
            "finds none): it serves on the CPU"
        )
    return warnings
