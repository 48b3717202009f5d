"""What a version is: a hash of everything a replica runs.

A code change, or a new runtime, gives a new image and a rolling update; a log file or anything
`.stackignore` names does not (stack.files). Each API's version adds its own spec, so changing one API's
bounds does not roll every other API.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import serving
from stack.files import ProjectFiles, package_files, tree_digest
from stack.spec import Api, LoadedSpec


def project_files(loaded: LoadedSpec, exclude: Path | None = None) -> ProjectFiles:
    """The project's files that go into its images (`.stackignore` and the defaults decide)."""
    return ProjectFiles(loaded.root, loaded.path, (exclude,) if exclude is not None else (), tuple(loaded.secret_files))


def project_digest(loaded: LoadedSpec, exclude: Path | None = None) -> str:
    """A hash of the project's files and the replica runtime (`serving`); `exclude`: the plan's own output
    directory, when it lies inside the project."""
    files = project_files(loaded, exclude).digest(cache_root=loaded.root)
    # `tracing` changes what every image installs (OpenTelemetry) and every replica's settings.
    tracing = f"\0{loaded.spec.tracing.model_dump_json()}" if loaded.spec.tracing is not None else ""
    return hashlib.sha256(f"{files}\0{runtime_digest()}{tracing}".encode()).hexdigest()


def runtime_digest() -> str:
    runtime = Path(serving.__file__).parent
    return tree_digest(runtime, package_files(runtime), None)


def control_plane_digest() -> str:
    """A hash of the controller image's code (`stack` and `serving`): a new release, a new image."""
    code = Path(__file__).resolve().parents[1]
    return hashlib.sha256(f"{tree_digest(code, package_files(code), None)}\0{runtime_digest()}".encode()).hexdigest()


def api_version(api: Api, digest: str) -> str:
    spec_text = api.model_dump_json(by_alias=True)
    return hashlib.sha256(f"{spec_text}\0{digest}".encode()).hexdigest()[:12]


def versions(loaded: LoadedSpec, digest: str) -> dict[str, str]:
    """Every API's version (BatchAPIs too) for a project digest."""
    return {api.name: api_version(api, digest) for api in loaded.spec.every_api}


def current_versions(loaded: LoadedSpec) -> dict[str, str]:
    """What the files on disk would build now: `stack status` compares them with what runs."""
    return versions(loaded, project_digest(loaded))
