"""The code is ruff-clean and type-checks: mypy --strict on the replica runtime and the spec,
mypy's defaults on the rest of the control plane. Caches go to a temporary directory, so a
test run leaves nothing in the work tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from common import ROOT


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args",
    [["--strict", "serving", "stack/spec"], ["stack"]],
    ids=["strict-serving-and-spec", "control-plane"],
)
def test_mypy(args: list[str], tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is missing: pip install -e '.[test]'")
    result = run(sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is missing: pip install -e '.[test]'")
    check = run(ruff, "check", "--no-cache", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    style = run(ruff, "format", "--check", "--no-cache", ".")
    assert style.returncode == 0, style.stdout + style.stderr


def test_imports_point_down_and_nothing_is_too_big() -> None:
    """serving < spec < plan < shared modules < targets < cli, no cycle, no target importing another,
    no isinstance on a target's classes outside it, classes <= 300 and modules <= 600 lines."""
    result = run(sys.executable, str(ROOT / "tests" / "structure_check.py"), str(ROOT))
    assert result.returncode == 0 and "structure: 0 problems" in result.stdout, result.stdout + result.stderr
