"""The files stack.yaml names exist: the predictor, its requirements, local model directories, python_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Path_ = tuple[str | int, ...]


def file_checks(predictor: dict[str, Any], root: Path, at: Path_, add: Any) -> list[Any]:
    path = predictor.get("path")
    if isinstance(path, str) and not predictor.get("image") and not (root / path).is_file():
        add((*at, "path"), f"predictor file {path} not found (looked in {root})")
    requirements = predictor.get("requirements")
    if isinstance(requirements, str) and not (root / requirements).is_file():
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
            if isinstance(location, str) and not location.startswith("s3://") and not (root / location).is_dir():
                add(where, f"model directory {location} not found (looked in {root}); or give an s3:// URL")
    python_path = predictor.get("python_path")
    entries_pp = [python_path] if isinstance(python_path, str) else python_path if isinstance(python_path, list) else []
    for index, entry in enumerate(entries_pp):
        if isinstance(entry, str) and not (root / entry).is_dir():
            add((*at, "python_path", index), f"directory {entry} not found (looked in {root})")
    return []
