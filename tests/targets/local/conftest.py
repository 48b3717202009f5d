"""Fixtures of the local target's tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli import stack
from common import EXAMPLES, free_port
from local_stack import write_spec


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The echo example as a local stack on a free port (two replicas); taken down after the test."""
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    port = free_port()
    write_spec(root, port)
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)
