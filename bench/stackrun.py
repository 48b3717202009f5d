"""What the end-to-end benchmarks share: the `stack` CLI as a subprocess, and free local ports."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACK = [sys.executable, "-m", "stack.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STACK, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
