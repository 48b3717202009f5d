"""The files stack.yaml names exist and are the project's own: the predictor, its requirements, local model
directories, python_path — each resolved (links followed) inside the directory of stack.yaml, since an image
gets that directory and nothing else. (TLS files and the API keys file may be anywhere: the gateway and the
replicas are handed them at run time; no image ever holds them.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stack.spec.problems import Problem

Path_ = tuple[str | int, ...]


def file_checks(predictor: dict[str, Any], root: Path, at: Path_, add: Any) -> list[Any]:
    path = predictor.get("path")
    outside = isinstance(path, str) and not predictor.get("image") and _inside(root, path, (*at, "path"), add)
    if isinstance(path, str) and not predictor.get("image") and not outside and not (root / path).is_file():
        add((*at, "path"), f"predictor file {path} not found (looked in {root})")
    requirements = predictor.get("requirements")
    outside = isinstance(requirements, str) and _inside(root, requirements, (*at, "requirements"), add)
    if isinstance(requirements, str) and not outside and not (root / requirements).is_file():
        add((*at, "requirements"), f"requirements file {requirements} not found (looked in {root})")
    for name in ("multi_model_reloading", "models"):
        models = predictor.get(name)
        if not isinstance(models, dict):
            continue
        entries: list[tuple[Path_, Any]] = [((*at, name, key), models.get(key)) for key in ("path", "dir")]
        paths = models.get("paths")
        for index, item in enumerate(paths if isinstance(paths, list) else []):
            if isinstance(item, dict):
                entries.append(((*at, name, "paths", index, "path"), item.get("path")))
        for where, location in entries:
            if not isinstance(location, str) or location.startswith("s3://") or _inside(root, location, where, add):
                continue
            if not (root / location).is_dir():
                add(where, f"model directory {location} not found (looked in {root}); or give an s3:// URL")
    python_path = predictor.get("python_path")
    entries_pp = [python_path] if isinstance(python_path, str) else python_path if isinstance(python_path, list) else []
    for index, entry in enumerate(entries_pp):
        if not isinstance(entry, str) or _inside(root, entry, (*at, "python_path", index), add):
            continue
        if not (root / entry).is_dir():
            add((*at, "python_path", index), f"directory {entry} not found (looked in {root})")
    return []


def _inside(root: Path, location: str, where: Path_, add: Any) -> bool:
    """Add a problem and return True when `location` resolves outside the project (`/etc/passwd`, `../x`, a
    link that leads out); False when it is inside (whether or not it exists)."""
    project = root.resolve()
    try:
        resolved = (root / location).resolve()
    except (OSError, RuntimeError):  # a link loop
        add(where, f"{location} is a link that never ends (a loop)")
        return True
    if resolved.is_relative_to(project):
        return False
    shown = location if location == str(resolved) else f"{location} (that is {resolved})"
    add(
        where,
        f"{shown} is outside the project: every file an API uses must be inside {project}, the directory "
        "its images are built from; copy it in and name it relative to stack.yaml",
    )
    return True


def compile_problems(root: Path, predictors: list[tuple[str, str]]) -> list[Problem]:
    """(api, predictor path) pairs whose file does not compile: a SyntaxError at its own file and line,
    found before anything is built or started (not by a replica's crash loop)."""
    problems = []
    for api, path in predictors:
        file = root / path
        try:
            source = file.read_bytes()
        except OSError:
            continue  # a missing file is the spec's own problem
        try:
            compile(source, str(file), "exec", dont_inherit=True)
        except SyntaxError as exc:
            message = f"API {api}'s predictor does not compile: SyntaxError: {exc.msg}"
            problems.append(Problem(str(file), exc.lineno or 1, exc.offset or 1, "", message))
        except ValueError as exc:  # null bytes
            problems.append(Problem(str(file), 1, 1, "", f"API {api}'s predictor is not Python source: {exc}"))
    return problems
