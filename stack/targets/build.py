"""Assemble one build context per image and build it.

`.stack/build/<service>/` holds exactly what the Dockerfile copies: the
project's files (without `.stack/`), the replica runtime (`serving/`), the
requirements and, for offline builds, a wheelhouse resolved on the host with
`pip download` for the image's Python. Containers then need no package index,
which is what air-gapped sites need and what CI here has.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import serving
import stack
from stack.errors import StackError
from stack.plan.render import IGNORED_DIRS, RUNTIME_REQUIREMENTS, build_context, control_plane_requirements

Progress = Callable[[str], None]


def assemble(
    root: Path, service: str, dockerfile: str, requirements: Path | None, wheelhouse: bool, progress: Progress
) -> Path:
    context = build_context(root, service)
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    shutil.copytree(root, context / "project", ignore=_ignore)
    shutil.copytree(Path(serving.__file__).parent, context / "serving", ignore=_ignore)
    reqs = requirements.read_text() if requirements else ""
    (context / "requirements.txt").write_text(reqs)
    (context / "Dockerfile").write_text(dockerfile)
    if wheelhouse:
        _wheelhouse(context, root, [*RUNTIME_REQUIREMENTS], context / "requirements.txt", progress)
    return context


def assemble_autoscaler(root: Path, dockerfile: str, wheelhouse: bool, progress: Progress) -> Path:
    """The autoscaler's context: the control plane's code and its dependencies (no project files)."""
    context = build_context(root, "autoscaler")
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    shutil.copytree(Path(stack.__file__).parent, context / "stack", ignore=_ignore)
    shutil.copytree(Path(serving.__file__).parent, context / "serving", ignore=_ignore)
    (context / "requirements.txt").write_text("\n".join(control_plane_requirements()) + "\n")
    (context / "Dockerfile").write_text(dockerfile)
    if wheelhouse:
        _wheelhouse(context, root, [], context / "requirements.txt", progress)
    return context


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in IGNORED_DIRS or n.endswith((".pyc", ".pyo"))}


def _wheelhouse(context: Path, root: Path, packages: list[str], requirements: Path, progress: Progress) -> None:
    """Wheels for the image, cached by the requirement set so unchanged builds skip the download."""
    wanted = "\n".join([*packages, requirements.read_text()])
    key = hashlib.sha256(wanted.encode()).hexdigest()[:16]
    cache = root / ".stack" / "wheelhouse" / key
    if not cache.is_dir():
        progress(f"resolving the wheelhouse ({' '.join([*packages, 'requirements.txt'])})")
        partial = cache.with_name(key + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(partial),
            *packages,
            "-r",
            str(requirements),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(
                f"resolving the wheelhouse failed (`{' '.join(command[2:5])} ...`):\n"
                f"{_tail(result.stderr or result.stdout)}"
            )
        partial.rename(cache)
    shutil.copytree(cache, context / "wheelhouse")


def build_image(context: Path, image: str, progress: Progress, labels: dict[str, str] | None = None) -> None:
    """`docker build`, showing the failing step's output when it fails."""
    progress(f"building {image}")
    label_args = [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
    result = subprocess.run(["docker", "build", "-t", image, *label_args, str(context)], capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"building {image} failed:\n{_failing_step(result.stdout + result.stderr)}")


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def image_label(image: str, label: str) -> str | None:
    """A label of a local image; None when there is no such image."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', image],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _failing_step(output: str) -> str:
    """From the last `Step N/M` (classic builder) or `#N [..]` (BuildKit) line to the end."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(("Step ", "#")) and ("/" in line or "[" in line)]
    return "\n".join(lines[starts[-1] :] if starts else lines[-30:])[-4000:]


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
