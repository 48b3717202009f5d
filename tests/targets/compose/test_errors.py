"""Compose target errors that need no Docker engine to show."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import EXAMPLES


def test_docker_not_installed_says_how_to_fix(tmp_path: Path) -> None:
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}  # no docker on PATH
    result = subprocess.run(
        [sys.executable, "-m", "stack.cli", "up", str(root)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert "Docker is not installed (no `docker` command)" in result.stderr
    assert "stack up --local" in result.stderr
    assert "Traceback" not in result.stderr
