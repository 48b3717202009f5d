"""Assemble one build context per image and build it.

`.stack/build/<service>/` holds exactly what the Dockerfile copies: the
project's files (what `.stackignore` and its defaults leave in), the replica
runtime (`serving/`), the requirements and, by default, a wheelhouse: the
wheels resolved on the host with `pip download` *for the image's own Python
and platform* (read from the base image itself). Containers then need no
package index — what air-gapped sites need, and what a TLS-intercepting proxy
that containers do not trust leaves. `build.wheelhouse: false` lets pip run
inside the image instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import serving
import stack
from stack.errors import BuildError
from stack.files import ProjectFiles, package_files
from stack.plan.images import (
    RUNTIME_REQUIREMENTS,
    build_context,
    controller_image,
    controller_requirements,
)
from stack.plan.versions import control_plane_digest
from stack.spec import LoadedSpec

Progress = Callable[[str], None]
CACHE_ENV = "STACK_CACHE_DIR"  # where this machine's wheelhouses live; default ~/.cache/stack (XDG_CACHE_HOME)


def cache_dir() -> Path:
    """This user's cache on this machine: wheelhouses and base-image facts, shared by every project
    (keyed by interpreter, platform and requirements, so one project never sees another's wheels)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stack"


@dataclass(frozen=True)
class ImagePython:
    """The interpreter inside a base image: what its wheels must be built for."""

    version: str  # "3.11"
    implementation: str  # "cp"
    machine: str  # "x86_64", "aarch64"
    libc: str  # "glibc" or "musl"
    libc_version: str  # "2.36"

    def pip_args(self) -> list[str]:
        """`pip download` flags selecting wheels this interpreter can install."""
        nodot = self.version.replace(".", "")
        args = ["--python-version", self.version, "--implementation", self.implementation]
        for abi in (f"{self.implementation}{nodot}", "abi3", "none"):
            args += ["--abi", abi]
        for platform in self.platforms():
            args += ["--platform", platform]
        return args

    def platforms(self) -> list[str]:
        arch = self.machine
        if self.libc == "musl":
            minor = _minor(self.libc_version, 2)
            return [f"musllinux_1_{m}_{arch}" for m in range(minor, -1, -1)] + ["any"]
        minor = _minor(self.libc_version, 17)
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
        tags += [f"manylinux2014_{arch}"]
        if arch in ("x86_64", "i686"):
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        return [*tags, "any"]

    def key(self) -> str:
        return f"{self.implementation}{self.version}-{self.libc}{self.libc_version}-{self.machine}"


def _minor(version: str, default: int) -> int:
    try:
        return int(version.split(".")[1])
    except (IndexError, ValueError):
        return default


_PROBE = (
    "import sys, platform, json; libc = platform.libc_ver(); "
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'impl': sys.implementation.name, "
    "'machine': platform.machine(), 'libc': libc[0] or 'musl', 'libc_version': libc[1] or '1.2'}))"
)


def image_python(base_image: str, cache_dir: Path) -> ImagePython:
    """Ask the base image's own interpreter (cached by image id: a local image never changes under its id)."""
    image_id = _docker_out(["image", "inspect", "--format", "{{.Id}}", base_image])
    if image_id is None:
        raise BuildError(
            f"the base image {base_image} is not on this machine. Pull it (`docker pull {base_image}`) "
            "or set build.base_image in stack.yaml to an image that is."
        )
    cache = cache_dir / "image-python.json"
    known: dict[str, dict[str, str]] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(cache.read_text())
    if image_id not in known:
        out = _docker_out(["run", "--rm", "--network", "none", "--entrypoint", "python", base_image, "-c", _PROBE])
        if out is None:
            raise BuildError(
                f"cannot run python in the base image {base_image}: the default build resolves wheels for the "
                "image's Python, so the image needs one on its PATH (use a python:* image, or set "
                "build.wheelhouse: false)."
            )
        known[image_id] = json.loads(out.splitlines()[-1])
        from stack.atomic import write_json_atomic

        write_json_atomic(cache, known)
    info = known[image_id]
    impl = {"cpython": "cp", "pypy": "pp"}.get(info["impl"], info["impl"])
    return ImagePython(info["version"], impl, info["machine"], info["libc"], info["libc_version"])


def _docker_out(args: list[str]) -> str | None:
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def assemble(
    files: ProjectFiles,
    service: str,
    dockerfile: str,
    requirements: Path | None,
    base_image: str,
    wheelhouse: bool,
    progress: Progress,
    extra: list[str] | None = None,
) -> Path:
    """`extra`: requirements the API's predictor type or models add (onnxruntime, boto3)."""
    root = files.root
    refuse_links_outside(files)
    context = build_context(root, service)
    if context.exists():
        shutil.rmtree(context)
    (context / "project").mkdir(parents=True)
    inside = root.resolve()
    for relative in files:
        target = context / "project" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        source = (root / relative).resolve()
        if not source.is_relative_to(inside):  # made a link to elsewhere since it was listed
            raise BuildError(f"{relative} now points to {source}, outside the project; nothing was built")
        shutil.copy2(source, target)
    _copy_package(Path(serving.__file__).parent, context / "serving")
    reqs = requirements.read_text() if requirements else ""
    named = {line.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip().lower() for line in reqs.splitlines()}
    added = [r for r in extra or [] if r.lower() not in named]
    if added:
        reqs = reqs.rstrip("\n") + ("\n" if reqs.strip() else "") + "\n".join(added) + "\n"
    (context / "requirements.txt").write_text(reqs)
    (context / "Dockerfile").write_text(dockerfile)
    if wheelhouse:
        _wheelhouse(context, root, base_image, [*RUNTIME_REQUIREMENTS], context / "requirements.txt", progress)
    return context


def refuse_links_outside(files: ProjectFiles) -> None:
    """An image gets the project's own files only: a link to a file outside it (`ln -s /etc/shadow
    weights.bin`, `~/.aws/credentials` under a harmless name) stops the build before anything is copied."""
    outside = files.links_outside()
    if not outside:
        return
    lines = "\n".join(f"  {relative} -> {pointed}" for relative, pointed in outside)
    raise BuildError(
        f"{len(outside)} link(s) in {files.root} point outside the project (or nowhere), and an image gets only "
        f"the project's own files:\n{lines}\n"
        "Copy the file into the project, or list the link in .stackignore (a model too big to copy: "
        "download it in the predictor's __init__, or use a model cache)."
    )


def assemble_autoscaler(root: Path, dockerfile: str, base_image: str, wheelhouse: bool, progress: Progress) -> Path:
    """The autoscaler's context: the control plane's code and its dependencies (no project files)."""
    context = build_context(root, "autoscaler")
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    _copy_package(Path(stack.__file__).parent, context / "stack")
    _copy_package(Path(serving.__file__).parent, context / "serving")
    (context / "requirements.txt").write_text("\n".join(controller_requirements()) + "\n")
    (context / "Dockerfile").write_text(dockerfile)
    if wheelhouse:
        _wheelhouse(context, root, base_image, [], context / "requirements.txt", progress)
    return context


def _copy_package(source: Path, target: Path) -> None:
    for relative in package_files(source):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)


def _wheelhouse(
    context: Path, root: Path, base_image: str, packages: list[str], requirements: Path, progress: Progress
) -> None:
    """Wheels for the image's interpreter, cached on this machine by (requirements, interpreter, platform)."""
    cache_root = cache_dir() / "wheelhouse"
    python = image_python(base_image, cache_root)
    wanted = "\n".join([python.key(), *packages, requirements.read_text()])
    key = hashlib.sha256(wanted.encode()).hexdigest()[:16]
    cache = cache_root / key
    if cache.is_dir():
        progress(f"wheels for the image's Python {python.version} ({python.machine}): resolved before, in {cache}")
    else:
        progress(f"resolving wheels for the image's Python {python.version} ({python.machine}) on this host")
        partial = cache.with_name(f"{key}.{os.getpid()}.partial")  # two builds at once each write their own
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            *python.pip_args(),
            "--dest",
            str(partial),
            *packages,
            "-r",
            str(requirements),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            output = result.stderr or result.stdout
            raise BuildError(f"resolving the wheelhouse failed: {_wheelhouse_hint(output, python)}\n{_tail(output)}")
        try:
            partial.rename(cache)
        except OSError:  # another build resolved the same wheels meanwhile: theirs are as good
            shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(cache, context / "wheelhouse")


def _wheelhouse_hint(output: str, python: ImagePython) -> str:
    if "No matching distribution" in output or "Could not find a version" in output:
        return (
            f"a requirement has no wheel for the image's Python {python.version} on {python.machine} "
            "(the line below names it). Pin a version that ships one, choose a base image whose Python it "
            "supports, or set build.wheelhouse: false to let pip build it inside the image (that needs a "
            "package index reachable from builds)."
        )
    if "SSL" in output or "CERTIFICATE" in output or "Failed to establish" in output or "ProxyError" in output:
        return (
            "this host's pip cannot reach the package index; check `pip download <package>` here (proxy, "
            "certificates), or fill the wheelhouse cache in .stack/wheelhouse/ from a machine that can."
        )
    return "pip download, run on this host for the image's Python, failed (its output follows)."


def build_image(context: Path, image: str, progress: Progress, labels: dict[str, str] | None = None) -> None:
    """`docker build`; when it fails, say which step and the likely fix before the raw log."""
    progress(f"building {image}")
    label_args = [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
    # --force-rm: a failed step leaves no stopped container behind.
    command = ["docker", "build", "--force-rm", "-t", image, *label_args, str(context)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 and _lost_layer(result.stdout + result.stderr):
        # An image removed while this one built (`docker image prune`, `docker rmi -f`) took a layer the
        # build stood on; nothing is wrong with the project, and a second build makes that layer again.
        progress(f"building {image} again: the engine lost a layer it was building on (an image removed meanwhile)")
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        raise BuildError(f"building {image} failed at {failure_summary(output)}\n\n{_failing_step(output)}")


def _lost_layer(output: str) -> bool:
    text = output.lower()
    return "unknown parent image id" in text or ("failed to export image" in text and "parent" in text)


def failure_summary(output: str) -> str:
    """One paragraph: the failing step and what most likely fixes it."""
    label, command = _failed_step(output)
    step = f"{label} (`{_short(command)}`)" if command else label
    text = output.lower()
    instruction = command.split(" ", 1)[0].upper()
    if _lost_layer(output):
        return (
            f"{step}: the engine lost a layer this build stood on: an image was removed while it built "
            "(`docker image prune`, `docker rmi -f`). Nothing is wrong with the project; run the command again."
        )
    if instruction == "RUN" and "pip install" in command:
        if any(s in text for s in ("certificate_verify_failed", "ssl", "proxy", "name resolution", "max retries")):
            return (
                f"{step}: pip inside the image cannot reach the package index (no network from builds, or a "
                "TLS-intercepting proxy the image does not trust). Set build.wheelhouse: true (the default) so "
                "the wheels are resolved on this host and the image installs them offline."
            )
        if "no matching distribution" in text or "could not find a version" in text:
            return (
                f"{step}: a requirement of requirements.txt has no version for the image's Python; pin one "
                "that exists or change build.base_image."
            )
        return f"{step}: installing the requirements failed; the pip output below names the package."
    if instruction in ("COPY", "ADD"):
        return f"{step}: a file the Dockerfile copies is missing from the build context (.stack/build/)."
    if instruction == "FROM" or "pull access denied" in text or "manifest unknown" in text:
        return f"{step}: the base image cannot be found; `docker pull` it or set build.base_image in stack.yaml."
    return f"{step}: the output of that step follows."


def _failed_step(output: str) -> tuple[str, str]:
    """("step 4/9", "RUN pip install ...") of the last step the build started."""
    lines = output.splitlines()
    for line in reversed(lines):
        if line.startswith("Step ") and " : " in line:  # classic builder: "Step 4/9 : RUN pip install ..."
            number, _, command = line.partition(" : ")
            return number.lower(), command.strip()
    for line in reversed(lines):  # BuildKit: "#8 [4/7] RUN pip install ..."
        if line.startswith("#") and "[" in line and "]" in line:
            inside = line.split("[", 1)[1].split("]", 1)
            return f"step {inside[0].strip()}", inside[1].strip()
    return "an unknown step", ""


def _short(command: str) -> str:
    return command if len(command) <= 80 else command[:77] + "..."


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


def warn_secrets(files: ProjectFiles, progress: Progress) -> None:
    """Say so when a file that looks like a secret would be copied into the images."""
    for relative in files.suspicious():
        progress(
            f"warning: {relative} looks like a secret and would be copied into the images; if it is one, add it to "
            f"{files.root / '.stackignore'} (images are pushed to registries and readable by anyone who pulls them)"
        )


def build_controller(loaded: LoadedSpec, dockerfile: str, progress: Progress) -> str:
    """The controller's image (the same code for every project: one per machine) from the plan's Dockerfile,
    rebuilt only when this release's code changed; its name."""
    image = controller_image()
    code = control_plane_digest()[:16]
    if image_label(image, "stack.code") != code:
        spec = loaded.spec.build
        context = assemble_autoscaler(loaded.root, dockerfile, spec.base_image, spec.wheelhouse, progress)
        build_image(context, image, progress, labels={"stack.code": code})
    return image
