"""The `stack` CLI as a user runs it, in this process: click's CliRunner instead of a Python start per
command (what a user sees is the same: the exit code, stdout and stderr). `STACK` is the command line
for the few tests that need a process of its own (a long-running `stack autoscale`, `stack logs -f`,
two commands at once)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from stack.cli import cli

STACK = [sys.executable, "-m", "stack.cli"]


@dataclass(frozen=True)
class Ran:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def stack(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout: float | None = None
) -> Ran:
    """`stack ARGS...` in `cwd`; with `check`, a non-zero exit fails the test with both outputs.
    (`timeout` is pytest-timeout's job in-process; kept so calls read as before.)"""
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, prog_name="stack")
    ran = Ran(args, result.exit_code, result.stdout, result.stderr)
    if check and ran.returncode != 0:
        raise AssertionError(f"stack {' '.join(args)} failed ({ran.returncode}):\n{ran.stdout}\n{ran.stderr}")
    return ran
